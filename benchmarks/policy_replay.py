"""How close does `auto` come to the best fixed K on the same prompts, without timing noise?

On this 2-core machine wall-clock runs of one prompt vary by several percent, as much as
neighbouring values of K differ, so "within 5% of the best K" cannot be settled by a handful of
timed runs alone. Under greedy decoding the draft's guesses depend only on the committed text, so
one teacher-forced draft pass over the target's own output says, for every position, whether the
draft's guess there is right; a step at position j with K guesses then accepts exactly the run of
right guesses from j (at most K). Each policy (the real `FixedK`, `HeuristicK`, `AutoK` objects)
is replayed on that trace with costs measured here (target pass over n tokens, draft pass), which
gives its modelled time per token, free of noise. The same costs drive `auto` in real runs.
One `AutoK` serves all prompts in turn, as a decoder keeps it from call to call.

Qwen2.5-Coder 1.5B target, 0.5B draft (int8; through the compiled draft decoder unless
`--draft-decoder modules`), bfloat16, small-rows kernels, HumanEval prompts.
Writes docs/results/NAME.{json,md} (`--name`, default policy_replay).

    python benchmarks/policy_replay.py --prompts 8 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import MODELS, cpu_name, write_results

from specdecode import SpeculativeDecoder
from specdecode.bench import workloads
from specdecode.compiled_decoder import attach
from specdecode.engine import AUTO_K_MAX
from specdecode.kv import CachedModel
from specdecode.loading import load_model, load_tokenizer
from specdecode.policy import AutoK, FixedK, HeuristicK, KPolicy, measure_pass_costs
from specdecode.small_rows import use_small_rows_path


def right_guesses(draft: CachedModel, prompt: list[int], output: list[int]) -> list[bool]:
    """[len(output)]: whether the draft's greedy guess for output token j, given the prompt and
    output[:j], is output[j] (one pass over all of it; each row's bits are those of one-token passes)."""
    draft.rollback(0)
    logits = draft.forward(prompt + output[:-1], num_logits=len(output))
    return (logits.argmax(-1) == torch.tensor(output, device=logits.device)).tolist()


def replay(policy: KPolicy, right: list[bool], verify_s: dict[int, float], draft_s: float) -> tuple[float, int]:
    """(modelled seconds, target passes) for decoding len(right) tokens with `policy` choosing K."""
    seconds, passes, j = 0.0, 0, 0
    while j < len(right):
        k = min(policy.next_k(), len(right) - j - 1)
        accepted = 0
        while accepted < k and right[j + accepted]:
            accepted += 1
        policy.observe(k, accepted)
        seconds += k * draft_s + verify_s[k + 1]
        passes += 1
        j += accepted + 1
    return seconds, passes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default=str(MODELS / "qwen2.5-coder-1.5b-instruct"))
    ap.add_argument("--draft", default=str(MODELS / "qwen2.5-coder-0.5b-instruct"))
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=5, help="timed passes per size for the cost curve")
    ap.add_argument("--draft-decoder", default="compiled", choices=("compiled", "modules"))
    ap.add_argument("--name", default="policy_replay", help="output file stem under docs/results/")
    args = ap.parse_args()

    tokenizer = load_tokenizer(args.target)
    target, draft = load_model(args.target, "bfloat16"), load_model(args.draft, "bfloat16")
    use_small_rows_path(target)
    use_small_rows_path(draft, "int8")
    if args.draft_decoder == "compiled" and not attach(draft):
        raise SystemExit("the compiled decoder does not support this draft")
    dec = SpeculativeDecoder(target, draft, tokenizer)
    draft_cache = CachedModel(draft, len(tokenizer))
    prompts = [dec.encode(p) for p in workloads.load("code", args.prompts, len(tokenizer))]
    sizes = list(range(1, HeuristicK().k_max + 2))  # the heuristic guesses up to 16 tokens
    verify_s = measure_pass_costs(dec.target, prompts[0], sizes, args.repeat)
    draft_s = measure_pass_costs(draft_cache, prompts[0], [1], args.repeat)[1]
    print("target pass ms:", {n: round(s * 1000) for n, s in verify_s.items()}, f"draft pass {draft_s * 1000:.0f} ms")

    policies = {f"K={k}": (lambda k=k: FixedK(k)) for k in range(AUTO_K_MAX + 1)}
    auto = AutoK(verify_s.get, lambda rows: rows * draft_s, AUTO_K_MAX)  # one for all prompts, as a decoder keeps it
    policies |= {"heuristic": HeuristicK, "auto": lambda: auto}
    runs = []
    for i, prompt in enumerate(prompts):
        dec.reset()
        output = dec.generate(prompt, args.max_new_tokens, num_speculative_tokens=0, ignore_eos=True).token_ids
        right = right_guesses(draft_cache, prompt, output)
        row = {name: replay(make(), right, verify_s, draft_s) for name, make in policies.items()}
        runs.append({"prompt_tokens": len(prompt), "right_guesses": sum(right), "policies": row})
        best = min(s for name, (s, _) in row.items() if name.startswith("K="))
        print(f"prompt {i + 1}: draft right {sum(right)}/{len(right)}; auto at {best / row['auto'][0]:.1%} of best K")

    lines = [
        f"{cpu_name()}; {len(prompts)} HumanEval prompts, {args.max_new_tokens} greedy tokens; costs measured "
        f"here: target pass over n tokens (ms) "
        + ", ".join(f"{n}: {s * 1000:.0f}" for n, s in verify_s.items())
        + f"; draft pass {draft_s * 1000:.0f} ms.",
        "",
        "| policy | modelled speedup over target-only (median, min-max) | share of the best fixed K on the prompt "
        "(median, min-max) | target passes per token |",
        "|---|---|---|---|",
    ]
    summary = {}
    for name in policies:
        speedups, shares, passes = [], [], []
        for run in runs:
            seconds, n_passes = run["policies"][name]
            plain = run["policies"]["K=0"][0]
            best = min(s for other, (s, _) in run["policies"].items() if other.startswith("K="))
            speedups.append(plain / seconds)
            shares.append(best / seconds)
            passes.append(n_passes / args.max_new_tokens)
        summary[name] = {"speedup": statistics.median(speedups), "share_of_best": statistics.median(shares)}
        lines.append(
            f"| {name} | {statistics.median(speedups):.3f}x ({min(speedups):.3f}-{max(speedups):.3f}) "
            f"| {statistics.median(shares):.1%} ({min(shares):.1%}-{max(shares):.1%}) "
            f"| {statistics.median(passes):.2f} |"
        )
    settings = {**vars(args), "verify_ms": {n: s * 1000 for n, s in verify_s.items()}, "draft_ms": draft_s * 1000}
    write_results(args.name, {"settings": settings, "summary": summary, "runs": runs}, lines)


if __name__ == "__main__":
    main()
