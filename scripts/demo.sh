#!/usr/bin/env bash
# Install, get SmolLM2-135M-Instruct, and ask it to edit a piece of code with speculative decoding by
# n-gram lookup (guesses copied from the prompt, no draft model) and K chosen each step from
# measured costs, next to target-only decoding:
# prints the text, the statistics, the speedup and whether the outputs are identical.
# The model: built by ../shared/models/fetch.sh where that script exists (machines without the
# model hub), else the hub id (downloaded by transformers on first use). MODEL=... overrides both.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
if [[ -n "${MODEL:-}" ]]; then
  model=$MODEL
elif [[ -f ../shared/models/fetch.sh ]]; then
  model=$(PYTHON=.venv/bin/python bash ../shared/models/fetch.sh smollm2 | tail -n 1)
else
  model=HuggingFaceTB/SmolLM2-135M-Instruct
fi
.venv/bin/specdecode generate --target "$model" --dtype float32 --proposer ngram -k auto \
  --chat --prompt-file examples/edit_code.txt --max-new-tokens 128 --compare-baseline "$@"
