"""`specdecode check`: measure what a target and its proposer cost on this machine and which K to use."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field

from specdecode.engine import SpeculativeDecoder
from specdecode.policy import best_k, expected_speedup, measure_pass_costs, step_costs
from specdecode.small_rows import describe_kernels
from specdecode.stats import DecodeStats

BUILTIN_PROMPTS = (
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    'import json\n\ndef load_config(path):\n    """Read a JSON config file and return a dict."""\n',
    "The three most important ideas in computer science are",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
)


@dataclass
class CheckReport:
    proposer: str
    kernels: str  # what computes the target's projections
    width: int  # guesses per depth: a tree's width, 1 for a chain
    target_ms: float  # one target pass over one token
    guess_ms: float  # the proposer's time for one depth (one draft pass; 0 for n-gram lookup)
    verify_ms: dict[int, float]  # n -> one target pass over n tokens
    acceptance_rate: float  # accepted / drafted (vLLM's definition)
    token_acceptance: float  # alpha for the formulas: per depth
    mean_acceptance_length: float
    recommended_k: int
    expected_speedup: float
    speedup_by_k: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        sizes = sorted(self.verify_ms)
        tree = f" ({self.width} wide: K is the depth, a step checks {self.width}K + 1 tokens)" if self.width > 1 else ""
        lines = [
            f"proposer: {self.proposer}{tree}",
            f"target's kernels: {self.kernels}",
            f"target: {self.target_ms:.1f} ms per token; proposer: {self.guess_ms:.1f} ms per guess depth "
            f"(cost ratio {self.guess_ms / self.target_ms:.2f})",
            "verify cost, one target pass over n tokens (relative to n = 1):",
            "  n    " + " ".join(f"{n:>6}" for n in sizes),
            "  ms   " + " ".join(f"{self.verify_ms[n]:6.0f}" for n in sizes),
            "  x    " + " ".join(f"{self.verify_ms[n] / self.verify_ms[1]:6.2f}" for n in sizes),
            f"acceptance on built-in prompts (greedy): {self.acceptance_rate:.1%} of guesses, "
            f"alpha = {self.token_acceptance:.2f}, mean acceptance length {self.mean_acceptance_length:.2f}",
            "expected speedup by K: " + ", ".join(f"K={k} {s:.2f}x" for k, s in self.speedup_by_k.items()),
            f"recommended: --num-speculative-tokens {self.recommended_k} "
            f"(expected {self.expected_speedup:.2f}x over target-only decoding)",
        ]
        return "\n".join(lines)


def run_check(
    dec: SpeculativeDecoder, proposer: str, k_max: int = 8, new_tokens: int = 32, progress=sys.stderr
) -> CheckReport:
    """Measure costs and acceptance, then pick the K with the best expected speedup."""
    if dec.proposer is None:
        raise ValueError("check needs a proposer: --draft or --draft-layers, or --proposer ngram")
    width = getattr(dec.proposer, "width", 1)
    context = (dec.encode(BUILTIN_PROMPTS[0]) * 8)[:96]
    print("measuring the target's verify-cost curve ...", file=progress, flush=True)
    sizes = sorted({1, *range(2, k_max + 2), *(width * k + 1 for k in range(k_max + 1))})
    curve = {n: s * 1000 for n, s in measure_pass_costs(dec.target, context, sizes).items()}
    total = DecodeStats()
    for i, prompt in enumerate(BUILTIN_PROMPTS):
        print(f"measuring acceptance: prompt {i + 1}/{len(BUILTIN_PROMPTS)} ...", file=progress, flush=True)
        stats = dec.generate(prompt, new_tokens, num_speculative_tokens=min(4, k_max), ignore_eos=True).stats
        total.add(stats)
    guess_ms = (dec.proposer.guess_cost() or 0.0) * 1000  # its estimate now (specdecode.pass_costs)
    dec.reset()
    alpha = total.token_acceptance
    steps = step_costs(curve.get, width, k_max)
    guess_cost = guess_ms / curve[1]
    k, speedup = best_k(alpha, guess_cost, steps)
    return CheckReport(
        proposer=proposer,
        kernels=describe_kernels(dec.target.model),
        width=width,
        target_ms=curve[1],
        guess_ms=guess_ms,
        verify_ms=curve,
        acceptance_rate=total.acceptance_rate,
        token_acceptance=alpha,
        mean_acceptance_length=total.mean_acceptance_length,
        recommended_k=k,
        expected_speedup=speedup,
        speedup_by_k={k: expected_speedup(alpha, k, guess_cost, steps) for k in range(0, k_max + 1)},
    )
