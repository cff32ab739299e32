#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install aiopt with its test extras.
# torch is pinned to the CPU build first so that pip does not pull a multi-GB CUDA build;
# set AIOPT_TORCH to another requirement (e.g. "torch==2.11.0") to override.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
python -m pip install --quiet "${AIOPT_TORCH:-torch==2.13.0}" 2>&1 | grep -v "^WARNING: Location" || true
python -m pip install --quiet -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
python -c "import aiopt, torch; print(f'aiopt {aiopt.__version__} with torch {torch.__version__} in .venv')"
