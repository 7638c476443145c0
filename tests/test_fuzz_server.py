"""Fuzzing the server with schemathesis: requests generated from the server's own OpenAPI document
(valid ones and invalid ones, boundary values first), none of which may get a 5xx; afterwards the
server is alive and answers a normal request correctly.

CI runs a bounded number of examples per operation; a long run is the same test with more:
    SPECDECODE_FUZZ_EXAMPLES=2000 .venv/bin/python -m pytest tests/test_fuzz_server.py -s
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from serving import KEY, MODEL, raw, running_server

from specdecode import SpeculativeDecoder

EXAMPLES = int(os.environ.get("SPECDECODE_FUZZ_EXAMPLES", "25"))  # per operation, in the fuzzing phase
SEED = int(os.environ.get("SPECDECODE_FUZZ_SEED", "1"))


@pytest.fixture(scope="module")
def server(model_dirs, tmp_path_factory):
    options = ["-k", "3", "--max-tokens-limit", "16", "--max-n", "3", "--request-timeout", "30"]
    with running_server(model_dirs, tmp_path_factory.mktemp("fuzz") / "server.log", *options) as server:
        yield server


def test_no_generated_request_gets_a_server_error(server, tmp_path):
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or pytest.fail("schemathesis is not installed")
    command = [st, "run", server["base"] + "/openapi.json", "--checks", "not_a_server_error"]
    command += ["--max-examples", str(EXAMPLES), "--seed", str(SEED), "-H", f"Authorization: Bearer {KEY}"]
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=3600)
    summary = run.stdout[run.stdout.rfind("SUMMARY") :]
    generated = re.search(r"(\d+) generated", summary)
    count = generated and generated.group(0)
    print(f"\nschemathesis: {count} requests, seed {SEED}, {EXAMPLES} examples per operation")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert generated and int(generated.group(1)) >= 300, summary
    assert "Traceback" not in server["log"].read_text()
    assert server["process"].poll() is None  # alive


def test_a_normal_request_is_answered_correctly_after_the_fuzzing(server, model_dirs):
    reference = SpeculativeDecoder.from_pretrained(*map(str, model_dirs))
    want = reference.generate("def add(a, b):", 16, num_speculative_tokens=3)
    body = {"model": MODEL, "prompt": "def add(a, b):", "max_tokens": 16, "temperature": 0}
    status, reply = raw(server, "/v1/completions", body)
    assert status == 200 and reply["choices"][0]["text"] == want.text
