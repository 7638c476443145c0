#!/usr/bin/env bash
# Install, fetch SmolLM2-135M for the one real-model test, lint, check that the built wheel keeps the
# compiled kernels, run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
model=$(PYTHON=.venv/bin/python bash ../shared/models/fetch.sh smollm2 | tail -n 1)
.venv/bin/ruff check specdecode tests benchmarks
bash scripts/check_wheel.sh "$model"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
