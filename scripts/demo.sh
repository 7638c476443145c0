#!/usr/bin/env bash
# Install, fetch SmolLM2-135M, and generate with speculative decoding (its first 8 layers as the
# draft) next to target-only decoding: prints the text, the statistics and the speedup.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
model=$(PYTHON=.venv/bin/python bash ../shared/models/fetch.sh smollm2 | tail -n 1)
.venv/bin/specdecode generate --target "$model" --draft-layers 8 --dtype float32 \
  --prompt "def fibonacci(n):" -k 4 --max-new-tokens 96 --compare-baseline "$@"
