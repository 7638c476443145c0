"""Proposers and the K policy on the Qwen2.5-Coder pair (issue 4), greedy and temperature 0.7.

One process, the CPU's fastest configuration (bfloat16 weights, small-rows kernels; int8 draft),
every method on the same prompt before the next prompt (the methods' order rotated from prompt to
prompt and from repetition to repetition, as the machine's speed drifts), `--max-new-tokens`
tokens, EOS ignored:
  code (HumanEval):  target-only; draft chain at each K; auto; tree (width 2) at each depth
  edit, summarize:   target-only; n-gram lookup at K=4 and auto (no draft); ngram+draft auto
  random tokens:     target-only; draft chain auto (random-token prompts)
  useless:           target-only; auto with a draft made of the target's first 2 layers, which is
                     almost never right (code prompts): auto must fall back to plain decoding
Speedup = target-only time / method time on the same prompt and temperature (times summed over
`--repeat` repetitions); medians over prompts.
Writes docs/results/proposers.{json,md}.

    python benchmarks/proposers.py --prompts 4 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import MODELS, cpu_name, write_results

from specdecode import SamplingParams, SpeculativeDecoder
from specdecode.bench import workloads
from specdecode.loading import first_layers
from specdecode.small_rows import use_small_rows_path

TARGET_ONLY = "target-only"


def method_table(ks: list[int], tree_ks: list[int]) -> dict[str, dict[str, tuple[str, int | str]]]:
    """workload -> method name -> (decoder name, K)."""
    code = {TARGET_ONLY: ("draft", 0)}
    code |= {f"chain K={k}": ("draft", k) for k in ks}
    code |= {"chain auto": ("draft", "auto")}
    code |= {f"tree w=2 K={k}": ("tree", k) for k in tree_ks}
    repeat = {TARGET_ONLY: ("draft", 0), "ngram K=4": ("ngram", 4), "ngram auto": ("ngram", "auto")}
    repeat |= {"ngram+draft auto": ("ngram+draft", "auto")}
    return {
        "code": code,
        "edit": repeat,
        "summarize": repeat,
        "random": {TARGET_ONLY: ("draft", 0), "chain auto": ("draft", "auto")},
        "useless": {TARGET_ONLY: ("draft", 0), "first-2-layers draft auto": ("first layers", "auto")},
    }


def mean_run(reps: list[dict]) -> dict:
    """One record for the repetitions of a method on a prompt: numbers averaged, the rest from the first."""
    return {
        key: statistics.mean(r[key] for r in reps) if isinstance(value, int | float) else value
        for key, value in reps[0].items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default=str(MODELS / "qwen2.5-coder-1.5b-instruct"))
    ap.add_argument("--draft", default=str(MODELS / "qwen2.5-coder-0.5b-instruct"))
    ap.add_argument("--prompts", type=int, default=4, help="prompts per workload (summarize has 3)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--ks", default="3,4,5")
    ap.add_argument("--tree-ks", default="3,4")
    ap.add_argument("--temperatures", default="0,0.7")
    ap.add_argument("--workloads", default="code,edit,summarize,random,useless")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each method on each prompt")
    ap.add_argument("--name", default="proposers", help="output file stem under docs/results/")
    args = ap.parse_args()
    temperatures = [float(t) for t in args.temperatures.split(",")]
    table = method_table([int(k) for k in args.ks.split(",")], [int(k) for k in args.tree_ks.split(",")])
    chosen = args.workloads.split(",")

    base = SpeculativeDecoder.from_pretrained(
        args.target, args.draft, dtype="bfloat16", draft_quantization="int8", kernels="small-rows"
    )
    target, draft, tok = base.target.model, base.proposer.draft.model, base.tokenizer
    decs = {name: SpeculativeDecoder(target, draft, tok, proposer=name) for name in ("tree", "ngram", "ngram+draft")}
    decs["draft"] = base
    weak = first_layers(target, 2)
    use_small_rows_path(weak)
    decs["first layers"] = SpeculativeDecoder(target, weak, tok)
    prompts = {
        "code": workloads.code(args.prompts),
        "edit": workloads.edit(args.prompts),
        "summarize": workloads.summarize(args.prompts),
        "random": workloads.random_tokens(args.prompts, tok.vocab_size),
        "useless": workloads.code(args.prompts),
    }

    def run(dec_name: str, prompt, k, temperature: float, seed: int) -> dict:
        dec = decs[dec_name]
        dec.reset()
        params = SamplingParams(temperature=temperature, seed=seed)
        r = dec.generate(prompt, args.max_new_tokens, num_speculative_tokens=k, sampling=params, ignore_eos=True)
        return {"wall_s": r.stats.wall_s, "token_ids": r.token_ids, **r.stats.to_dict()}

    used = {d for workload in chosen for d, _ in table[workload].values()}
    for name in sorted(used):  # warm-up, and each decoder's one-time cost calibration for "auto"
        run(name, prompts["code"][0] if "code" in chosen else "def f(x):", "auto", 0.0, 0)

    runs = []
    for workload in chosen:
        for i, prompt in enumerate(prompts[workload]):
            for temperature in temperatures:
                methods = list(table[workload].items())
                reps = []
                for rep in range(args.repeat):
                    turn = (i + rep) % len(methods)
                    order = methods[turn:] + methods[:turn]
                    reps.append({m: run(d, prompt, k, temperature, seed=i) for m, (d, k) in order})
                row = {m: mean_run([r[m] for r in reps]) for m in table[workload]}
                for m, r in row.items():
                    r["speedup"] = row[TARGET_ONLY]["wall_s"] / r["wall_s"]
                    same = all(r_[m]["token_ids"] == r_[TARGET_ONLY]["token_ids"] for r_ in reps)
                    r["identical"] = same if temperature == 0 else None
                runs.append({"workload": workload, "prompt_index": i, "temperature": temperature, "methods": row})
                print(
                    f"{workload} {i + 1}/{len(prompts[workload])} T={temperature}: "
                    + ", ".join(f"{m} {r['speedup']:.2f}x" for m, r in row.items()),
                    flush=True,
                )

    summary, lines = (
        {},
        [
            f"{cpu_name()}, torch {torch.__version__} ({torch.get_num_threads()} threads). Qwen2.5-Coder 1.5B target, "
            f"0.5B draft (int8), bfloat16, small-rows kernels; {args.max_new_tokens} new tokens, EOS ignored. "
            "Speedup = target-only time / method time, same prompt and temperature; median (min-max) over prompts.",
        ],
    )
    for workload in chosen:
        for temperature in temperatures:
            rows = [r["methods"] for r in runs if r["workload"] == workload and r["temperature"] == temperature]
            lines += [
                "",
                f"**{workload}, temperature {temperature:g}** ({len(rows)} prompts)",
                "",
                "| method | tok/s | speedup | identical | acceptance | mean acc. length | target passes/token "
                "| ms per step: draft / verify / other |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for m in rows[0]:
                rs = [row[m] for row in rows]
                med = {
                    key: statistics.median(r[key] for r in rs)
                    for key in (
                        "tokens_per_s",
                        "speedup",
                        "acceptance_rate",
                        "mean_acceptance_length",
                        "target_passes_per_token",
                    )
                }
                ms = [
                    statistics.median(1000 * r[key] / r["target_passes"] for r in rs)
                    for key in ("draft_s", "target_s", "overhead_s")
                ]
                same = f"{sum(r['identical'] for r in rs)}/{len(rs)}" if temperature == 0 else "n/a (sampled)"
                summary[f"{workload} T={temperature:g} {m}"] = {
                    **med,
                    "speedup_min": min(r["speedup"] for r in rs),
                    "speedup_max": max(r["speedup"] for r in rs),
                    "step_ms": {"draft": ms[0], "verify": ms[1], "other": ms[2]},
                    "identical": same,
                }
                lines.append(
                    f"| {m} | {med['tokens_per_s']:.2f} | {med['speedup']:.2f}x "
                    f"({min(r['speedup'] for r in rs):.2f}-{max(r['speedup'] for r in rs):.2f}) | {same} "
                    f"| {med['acceptance_rate']:.1%} | {med['mean_acceptance_length']:.2f} "
                    f"| {med['target_passes_per_token']:.2f} | {ms[0]:.0f} / {ms[1]:.0f} / {ms[2]:.1f} |"
                )
    for r in runs:
        for m in r["methods"].values():
            m.pop("token_ids")
    write_results(args.name, {"settings": vars(args), "summary": summary, "runs": runs}, lines)


if __name__ == "__main__":
    main()
