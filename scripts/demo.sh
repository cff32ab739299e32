#!/usr/bin/env bash
# The main job, end to end on the default: install, train the base CNN on MNIST-1D, inspect it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
mkdir -p artifacts
aiopt train cnn --dataset mnist1d -o artifacts/cnn.pt --force
aiopt inspect artifacts/cnn.pt
