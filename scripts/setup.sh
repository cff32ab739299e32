#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install aiopt with its test extras.
# torch is pinned to the CPU build first so that pip does not pull a multi-GB CUDA build;
# set AIOPT_TORCH to another requirement (e.g. "torch==2.11.0", options allowed) to override.
# pip's output goes to .venv/install.log and is printed only when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
LOG=.venv/install.log
: > "$LOG"
install() {
  if ! python -m pip install "$@" >> "$LOG" 2>&1; then
    cat "$LOG" >&2
    echo "setup: 'pip install $*' failed; pip's output is above and in $LOG" >&2
    exit 1
  fi
}
read -r -a TORCH <<< "${AIOPT_TORCH:-torch==2.13.0}"  # split: it may carry --index-url URL
install --upgrade pip
install "${TORCH[@]}"
install -e ".[test]"
python -c "import aiopt, torch; print(f'aiopt {aiopt.__version__} with torch {torch.__version__} in .venv')"
