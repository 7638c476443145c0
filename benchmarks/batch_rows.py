"""Rows decoded together against the same prompts one at a time, on a GGUF (or any) target pair.

For each batch size B, the first B HumanEval prompts, --max-new-tokens greedy tokens each (EOS
ignored), methods in an order rotated by one per batch size:
  one at a time, K = 0 | auto:  `generate(prompt)` per prompt, caches reset between prompts
  batched, K = 0 | auto | K:    `generate(prompts)`: every step one target pass for all rows
tokens/s = B * max_new_tokens / wall time (prompt passes and the draft's first reading of each prompt
included). Every method's tokens are compared with one at a time, K = 0 (target-only decoding).
Writes docs/results/<name>.{json,md}.

  python benchmarks/batch_rows.py --target T.gguf --draft D.gguf --batch-sizes 1,2,4,8 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from common import RESULTS, humaneval_prompts, rotated

from specdecode import SpeculativeDecoder
from specdecode.bench.machine import cpu_name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True)
    ap.add_argument("--draft", required=True)
    ap.add_argument("--batch-sizes", default="1,2,4,8")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--k", type=int, default=4, help="the fixed K of the batched run with guesses")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="batch_rows")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dec = SpeculativeDecoder.from_pretrained(args.target, args.draft)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    prompts = humaneval_prompts(max(sizes))
    new = args.max_new_tokens
    dec.generate(prompts[0], 8, num_speculative_tokens="auto", ignore_eos=True)  # kernels, `auto` calibration

    def one_at_a_time(batch: list[str], k) -> list:
        out = []
        for prompt in batch:
            dec.reset()
            out.append(dec.generate(prompt, new, num_speculative_tokens=k, ignore_eos=True))
        return out

    methods = {
        "one at a time, K = 0": lambda batch: one_at_a_time(batch, 0),
        "one at a time, auto": lambda batch: one_at_a_time(batch, "auto"),
        "batched, K = 0": lambda batch: list(dec.generate(batch, new, num_speculative_tokens=0, ignore_eos=True)),
        "batched, auto": lambda batch: list(dec.generate(batch, new, num_speculative_tokens="auto", ignore_eos=True)),
        f"batched, K = {args.k}": lambda batch: list(
            dec.generate(batch, new, num_speculative_tokens=args.k, ignore_eos=True)
        ),
    }
    rows = []
    for shift, b in enumerate(sizes):
        batch, runs = prompts[:b], {}
        for name in rotated(list(methods), shift):
            start = time.perf_counter()
            results = methods[name](batch)
            runs[name] = (b * new / (time.perf_counter() - start), results)
        plain = [r.token_ids for r in runs["one at a time, K = 0"][1]]
        for name in methods:
            speed, results = runs[name]
            drafted = sum(r.stats.drafted for r in results)
            accepted = sum(r.stats.accepted for r in results)
            rows.append(
                {
                    "batch": b,
                    "method": name,
                    "tokens_per_s": speed,
                    "identical": [r.token_ids for r in results] == plain,
                    "drafted": drafted,
                    "accepted": accepted,
                }
            )
            print(f"B={b} {name}: {speed:.1f} tokens/s, identical={rows[-1]['identical']}", file=sys.stderr)
    write(args, rows)
    return 0


def write(args, rows: list[dict]) -> None:
    machine = cpu_name()
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"machine": machine, "args": vars(args), "rows": rows}))
    names = list(dict.fromkeys(r["method"] for r in rows))
    lines = [
        f"Machine: {machine}, {args.threads} threads; {args.max_new_tokens} greedy tokens per row, EOS ignored.",
        "",
        "| B | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for b in dict.fromkeys(r["batch"] for r in rows):
        by = {r["method"]: r for r in rows if r["batch"] == b}
        base = by["one at a time, K = 0"]["tokens_per_s"]
        cells = [
            f"{by[n]['tokens_per_s']:.1f} ({by[n]['tokens_per_s'] / base:.2f}x)" + ("" if by[n]["identical"] else " !=")
            for n in names
        ]
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
