"""How many tokens to guess: the expected-speedup formulas of the guide (section 2).

Costs are relative to one target pass over one token: `draft_cost` is one draft token and
`verify_cost[n]` is one target pass over n tokens (1.0 at n = 1; on a GPU about 1.0 for small n,
on a CPU it grows with n, so measure it).
"""

from __future__ import annotations

from collections.abc import Mapping


def expected_tokens_per_pass(alpha: float, k: int) -> float:
    """E[tokens per target pass] with K guesses each accepted with probability alpha: (1-a^(K+1))/(1-a)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if alpha == 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def expected_speedup(alpha: float, k: int, draft_cost: float, verify_cost: Mapping[int, float]) -> float:
    """Tokens per unit time relative to target-only decoding: E(K) / (K * draft_cost + verify_cost[K+1])."""
    return expected_tokens_per_pass(alpha, k) / (k * draft_cost + verify_cost[k + 1] / verify_cost[1])


def best_k(alpha: float, draft_cost: float, verify_cost: Mapping[int, float]) -> tuple[int, float]:
    """(K, expected speedup) maximising the speedup over the K whose verify cost is known; K = 0 included."""
    candidates = [k for k in range(0, max(verify_cost)) if k + 1 in verify_cost]
    return max(
        ((k, expected_speedup(alpha, k, draft_cost, verify_cost)) for k in candidates), key=lambda x: x[1]
    )
