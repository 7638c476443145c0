"""The benchmark's statistics, pure functions: spreads, a speedup interval, the theoretical bound.

Times are seconds; `verify_s` is a measured cost curve {n: seconds of one target pass over n tokens}.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats as scipy_stats


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float  # nan when there are too few pairs for an interval
    high: float


def median_iqr(values: Sequence[float]) -> Interval:
    """The median and the interquartile range (the middle half of the values)."""
    if not values:
        raise ValueError("no values")
    if len(values) == 1:
        return Interval(values[0], values[0], values[0])
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return Interval(q2, q1, q3)


def speedup_interval(baseline_s: Sequence[float], method_s: Sequence[float], confidence: float = 0.95) -> Interval:
    """Speedup of a method over the baseline from paired times (same prompt, repetition and temperature):
    the geometric mean of baseline / method, with a Student-t interval on the mean log ratio.

    The pairs are treated as independent draws of the ratio; with fewer than two the interval is nan.
    """
    if len(baseline_s) != len(method_s) or not baseline_s:
        raise ValueError(f"need paired times, got {len(baseline_s)} and {len(method_s)}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    logs = [math.log(b / m) for b, m in zip(baseline_s, method_s, strict=True)]
    mean = statistics.fmean(logs)
    if len(logs) < 2:
        return Interval(math.exp(mean), math.nan, math.nan)
    half = scipy_stats.t.ppf((1 + confidence) / 2, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return Interval(math.exp(mean), math.exp(mean - half), math.exp(mean + half))


def depth_histogram(drafted_at: Sequence[int], target_passes: int) -> dict[int, int]:
    """{guess depth: target passes that checked that many depths}, from the per-position guess counts
    (drafted_at[i] passes guessed at position i + 1, so passes with depth d = drafted_at[d-1] - drafted_at[d])."""
    reached = [target_passes, *drafted_at, 0]
    histogram = {d: reached[d] - reached[d + 1] for d in range(len(reached) - 1)}
    if any(count < 0 for count in histogram.values()):
        raise ValueError(f"per-position counts must not grow with the position: {list(drafted_at)}")
    return {d: count for d, count in histogram.items() if count}


def pass_cost(verify_s: Mapping[int, float], n: int) -> float:
    """Seconds of a target pass over n tokens: the curve, linear between measured sizes and beyond the largest."""
    if n in verify_s:
        return verify_s[n]
    sizes = sorted(verify_s)
    if n < sizes[0]:
        raise ValueError(f"the cost curve starts at n = {sizes[0]}, asked for {n}")
    if len(sizes) == 1:
        return verify_s[sizes[0]]
    upper = next((s for s in sizes if s > n), sizes[-1])
    lower = max(s for s in sizes if s < upper)
    return verify_s[lower] + (verify_s[upper] - verify_s[lower]) * (n - lower) / (upper - lower)


def theoretical_speedup(
    tokens_per_pass: float,
    depths: Mapping[int, int],
    width: float,
    draft_s_per_pass: float,
    verify_s: Mapping[int, float],
) -> float:
    """The speedup over target-only decoding that the measured acceptance and costs allow (docs/design.md §3):

        tokens per target pass * t(1) / (draft seconds per pass + mean over passes of t(width * depth + 1))

    `depths`: {guess depth: passes} (see `depth_histogram`); `width`: tokens checked per depth (1 for a
    chain). It leaves out everything but the two models' passes (sampling, bookkeeping, the prompt),
    which is why a run lands below it.
    """
    passes = sum(depths.values())
    if passes == 0:
        raise ValueError("no target passes")
    verify = sum(count * pass_cost(verify_s, round(width * d) + 1) for d, count in depths.items()) / passes
    return tokens_per_pass * verify_s[1] / (draft_s_per_pass + verify)


def bound_with_prompt(bound: float, prompt_share: float) -> float:
    """The speedup bound for whole runs when a share of the baseline's time is the prompt's pass, which
    speculation does not shorten (Amdahl): 1 / (share + (1 - share) / bound)."""
    if not 0.0 <= prompt_share < 1.0:
        raise ValueError(f"the prompt's share of the time must be in [0, 1), got {prompt_share}")
    return 1.0 / (prompt_share + (1.0 - prompt_share) / bound)
