"""`specdecode check`: measure what a target/draft pair costs on this machine and which K to use."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field

from specdecode.engine import SpeculativeDecoder
from specdecode.policy import best_k, expected_speedup, measure_pass_costs
from specdecode.proposers import DraftModelProposer
from specdecode.stats import DecodeStats

BUILTIN_PROMPTS = (
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    'import json\n\ndef load_config(path):\n    """Read a JSON config file and return a dict."""\n',
    "The three most important ideas in computer science are",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
)


@dataclass
class CheckReport:
    target_ms: float  # one target pass over one token
    draft_ms: float  # one draft pass over one token
    verify_ms: dict[int, float]  # n -> one target pass over n tokens
    acceptance_rate: float  # accepted / drafted (vLLM's definition)
    token_acceptance: float  # alpha for the formulas
    mean_acceptance_length: float
    recommended_k: int
    expected_speedup: float
    speedup_by_k: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        n_max = max(self.verify_ms)
        lines = [
            f"target: {self.target_ms:.1f} ms per token; draft: {self.draft_ms:.1f} ms per token "
            f"(cost ratio {self.draft_ms / self.target_ms:.2f})",
            "verify cost, one target pass over n tokens (relative to n = 1):",
            "  n    " + " ".join(f"{n:>6}" for n in range(1, n_max + 1)),
            "  ms   " + " ".join(f"{self.verify_ms[n]:6.0f}" for n in range(1, n_max + 1)),
            "  x    " + " ".join(f"{self.verify_ms[n] / self.verify_ms[1]:6.2f}" for n in range(1, n_max + 1)),
            f"acceptance on built-in prompts (greedy): {self.acceptance_rate:.1%} of guesses, "
            f"alpha = {self.token_acceptance:.2f}, mean acceptance length {self.mean_acceptance_length:.2f}",
            "expected speedup by K: " + ", ".join(f"K={k} {s:.2f}x" for k, s in self.speedup_by_k.items()),
            f"recommended: --num-speculative-tokens {self.recommended_k} "
            f"(expected {self.expected_speedup:.2f}x over target-only decoding)",
        ]
        return "\n".join(lines)


def run_check(dec: SpeculativeDecoder, k_max: int = 8, new_tokens: int = 32, progress=sys.stderr) -> CheckReport:
    """Measure costs and acceptance, then pick the K with the best expected speedup."""
    if not isinstance(dec.proposer, DraftModelProposer):
        raise ValueError("check measures a draft model: use --proposer draft with --draft or --draft-layers")
    context = (dec.encode(BUILTIN_PROMPTS[0]) * 8)[:96]
    print("measuring the target's verify-cost curve ...", file=progress, flush=True)
    curve = {n: s * 1000 for n, s in measure_pass_costs(dec.target, context, range(1, k_max + 2)).items()}
    print("measuring the draft's cost ...", file=progress, flush=True)
    draft_ms = measure_pass_costs(dec.proposer.draft, context, [1], repeats=5)[1] * 1000
    total = DecodeStats()
    for i, prompt in enumerate(BUILTIN_PROMPTS):
        print(f"measuring acceptance: prompt {i + 1}/{len(BUILTIN_PROMPTS)} ...", file=progress, flush=True)
        stats = dec.generate(prompt, new_tokens, num_speculative_tokens=min(4, k_max), ignore_eos=True).stats
        total.accepted += stats.accepted
        total.drafted += stats.drafted
        total.rejections += stats.rejections
        total.target_passes += stats.target_passes
    dec.reset()
    alpha = total.token_acceptance
    draft_cost = draft_ms / curve[1]
    k, speedup = best_k(alpha, draft_cost, curve)
    return CheckReport(
        target_ms=curve[1],
        draft_ms=draft_ms,
        verify_ms=curve,
        acceptance_rate=total.acceptance_rate,
        token_acceptance=alpha,
        mean_acceptance_length=total.mean_acceptance_length,
        recommended_k=k,
        expected_speedup=speedup,
        speedup_by_k={k: expected_speedup(alpha, k, draft_cost, curve) for k in range(0, k_max + 1)},
    )
