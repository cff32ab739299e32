#!/usr/bin/env bash
# Install, check the import layers and lint, then run the whole test suite (CPU only; GPU/TensorRT
# tests skip with a reason). Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`
# for the fast subset (docs/testing.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
bash scripts/lint.sh
python -m pytest "$@"
