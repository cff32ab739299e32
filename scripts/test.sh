#!/usr/bin/env bash
# Install, check the import layers and lint, then run the whole test suite (CPU only; GPU/TensorRT
# tests skip with a reason). Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`
# for the fast subset (docs/testing.md).
# Two xdist workers by default, each file whole in one worker, the longest files handed out first
# (tests/conftest.py); `-n 0` or `-p no:xdist` (or --pdb) among the arguments runs one process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
bash scripts/lint.sh
workers=(-n 2 --dist loadfile --no-loadscope-reorder)
for arg in "$@"; do
  case "$arg" in no:xdist|-pno:xdist|--pdb|--trace) workers=() ;; esac  # xdist absent, or a debugger: one process
done
python -m pytest "${workers[@]}" "$@"
