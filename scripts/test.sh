#!/usr/bin/env bash
# Install, fetch SmolLM2-135M for the one real-model test, lint, run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
PYTHON=.venv/bin/python bash ../shared/models/fetch.sh smollm2 > /dev/null
.venv/bin/ruff check specdecode tests benchmarks
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
