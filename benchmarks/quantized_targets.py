"""Weight-only quantized Hugging Face targets (`--quantization int8|int4`) against the bfloat16 model.

Target-only greedy decoding of HumanEval prompts (EOS ignored) with the checkpoint's weights as they are
and quantized at load: decode tokens/s, and how far each quantized run agrees with the bfloat16 run's
tokens (a quantized model is a different model: its output is its own, not the original's).

  python benchmarks/quantized_targets.py --target FOLDER --prompts 3 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
from common import RESULTS, humaneval_prompts, rotated

from specdecode import SpeculativeDecoder
from specdecode.bench.machine import cpu_name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True, help="a Hugging Face model folder or hub id")
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="quantized_targets")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    configs = {  # name -> (quantization, target decoder)
        "none": ("none", "modules"),
        "none, compiled": ("none", "compiled"),
        "int8": ("int8", "compiled"),
        "int4": ("int4", "compiled"),
    }
    kinds = tuple(configs)
    decoders = {
        name: SpeculativeDecoder.from_pretrained(args.target, quantization=q, target_decoder=d, proposer="ngram")
        for name, (q, d) in configs.items()
    }
    prompts = humaneval_prompts(args.prompts)
    runs: dict[str, list[dict]] = {q: [] for q in kinds}
    for i, prompt in enumerate(prompts):
        tokens = {}
        for q in rotated(kinds, i):
            dec = decoders[q]
            dec.reset()
            out = dec.generate(prompt, args.max_new_tokens, num_speculative_tokens=0, ignore_eos=True)
            s = out.stats
            tokens[q] = out.token_ids
            runs[q].append({"decode_tok_s": (s.new_tokens - 1) / (s.wall_s - s.first_token_s)})
            print(f"prompt {i} {q}: {runs[q][-1]['decode_tok_s']:.1f} tok/s", file=sys.stderr, flush=True)
        for q in kinds:
            same = next((j for j, (a, b) in enumerate(zip(tokens[q], tokens["none"], strict=False)) if a != b), None)
            runs[q][-1]["same_first_tokens"] = len(tokens[q]) if same is None else same
    command = "python benchmarks/quantized_targets.py " + " ".join(sys.argv[1:])
    lines = [
        f"`{command}`",
        "",
        f"{cpu_name()}, {args.threads} threads, {len(prompts)} HumanEval prompts, {args.max_new_tokens} new tokens, "
        "greedy target-only decoding, EOS ignored; medians over prompts.",
        "",
        "| target weights | decoder | decode tok/s | x bfloat16 | tokens before the first difference from bfloat16 |",
        "|---|---|---|---|---|",
    ]
    base = statistics.median(r["decode_tok_s"] for r in runs["none"])
    summary = {}
    for q in kinds:
        tps = statistics.median(r["decode_tok_s"] for r in runs[q])
        decoder = "compiled" if decoders[q].target.decoder is not None else "modules"
        same = [r["same_first_tokens"] for r in runs[q]]
        summary[q] = {"decode_tok_s": tps, "decoder": decoder, "same_first_tokens": same}
        label = q.replace("none", "checkpoint's (bfloat16)")
        lines.append(f"| {label} | {decoder} | {tps:.1f} | {tps / base:.2f}x | {same} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"command": command, "cpu": cpu_name(), "summary": summary, "runs": runs}
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
