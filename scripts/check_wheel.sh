#!/usr/bin/env bash
# Build the wheel, install it (not editable) into a fresh venv, build the kernels from the installed
# package in an empty extensions folder, and fail unless `specdecode check` reports the small-rows
# kernels: an install that lost a source or header would fall back to stock PyTorch with a warning.
# Usage: scripts/check_wheel.sh MODEL   (a model folder, e.g. SmolLM2-135M from ../shared/models/fetch.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/python -m pip wheel -q --no-deps -w "$work/dist" .
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q -c .venv/constraints.txt "torch==2.13.0" "$work"/dist/specdecode-*.whl
cd "$work"  # away from the source tree, so that Python imports the installed package
TORCH_EXTENSIONS_DIR="$work/extensions" "$work/venv/bin/specdecode" check --target "$model" --proposer ngram \
  --max-k 2 --dtype float32 | tee "$work/check.txt"
grep -q "target's kernels: small-rows" "$work/check.txt" || { echo "check_wheel: the installed wheel fell back to stock kernels" >&2; exit 1; }
echo "check_wheel: the installed wheel runs the small-rows kernels"
