#!/usr/bin/env bash
# Install, then run the whole test suite (CPU only; GPU/TensorRT tests skip with a reason).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"` for the quick part.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m pytest "$@"
