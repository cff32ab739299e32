#!/usr/bin/env bash
# Every CUDA and TensorRT test and the CUDA benchmarks in one call of at most 8 minutes, on a
# machine with an NVIDIA GPU and a CUDA build of torch, without network and without installing
# aiopt (it runs from this tree through PYTHONPATH). Reports go under OUTDIR:
#   machine.txt       nvidia-smi, torch/CUDA/onnxruntime versions
#   pytest.log/.xml   pytest -m "gpu or tensorrt" (TensorRT tests skip where TensorRT is absent)
#   bench/, bench.log benchmarks/run.py --quick on cpu and cuda at batch 1 and 256 (tiny CNN:
#                     FP32, ONNX, INT8, pruned, distilled, torch-cuda FP16 graphs; torch.compile peer)
#   summary.txt       one line per stage: exit code and seconds
# Packages the GPU image lacks (mnist1d, onnxslim, torch-pruning) travel as wheels in .whl/:
# `bash scripts/gpu_check.sh --prepare` downloads them here (pure Python, the versions installed
# here); this script installs them into a temporary folder, never into the system.
# Exit: 0 every stage passed, 1 a stage failed or ran out of time, 2 bad usage, 4 no CUDA device.
# Usage: bash scripts/gpu_check.sh OUTDIR | bash scripts/gpu_check.sh --prepare
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CARRIED="mnist1d onnxslim torch-pruning"   # pure-Python packages the GPU image does not have

if [ "${1:-}" = "--prepare" ]; then
  mkdir -p .whl
  for name in $CARRIED; do
    version=$("$PY" -c "import importlib.metadata, sys; print(importlib.metadata.version(sys.argv[1]))" "$name") || exit 2
    "$PY" -m pip download -q --no-deps --only-binary=:all: -d .whl "$name==$version" || exit 2
  done
  echo "gpu_check: wheels for $CARRIED in .whl/ (carry .whl with the tree)"
  exit 0
fi
if [ $# -ne 1 ] || [ -z "$1" ] || [ "${1#-}" != "$1" ]; then
  echo "usage: bash scripts/gpu_check.sh OUTDIR (or --prepare to download the wheels to carry)" >&2
  exit 2
fi
OUT=$1

cuda=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>/dev/null) || cuda=""
if [ -z "$cuda" ]; then
  echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False or torch is missing); nothing run: run it on a machine with an NVIDIA GPU and a CUDA build of torch" >&2
  exit 4
fi

mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" NO_COLOR=1 AIOPT_CACHE_DIR="$scratch/cache"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$scratch/site" .whl/*.whl \
    || { echo "gpu_check: installing the carried wheels (.whl/) failed" >&2; exit 1; }
  export PYTHONPATH="$PYTHONPATH:$scratch/site"
fi

{ nvidia-smi 2>&1; "$PY" - <<'PY'
import importlib, platform
import torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, GPU {torch.cuda.get_device_name(0)}")
for name in ("onnxruntime", "onnx", "tensorrt", "torch_tensorrt", "mnist1d", "onnxslim", "torch_pruning"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except ImportError as exc:
        print(f"{name} absent ({exc})")
PY
} > "$OUT/machine.txt" 2>&1

failed=0
stage() {  # stage NAME SECONDS LOG COMMAND...: run with a time limit, record exit code and seconds
  local name=$1 limit=$2 log=$3 start=$SECONDS rc
  shift 3
  timeout --signal=INT --kill-after=15 "$limit" "$@" > "$log" 2>&1
  rc=$?
  [ "$rc" -eq 124 ] && echo "$name: stopped after its limit of ${limit}s" >> "$log"
  echo "$name rc=$rc seconds=$((SECONDS - start))" >> "$OUT/summary.txt"
  [ "$rc" -eq 0 ] || failed=1
}
: > "$OUT/summary.txt"
# 8 minutes in all: tests 250 s, benchmarks 180 s (each +15 s if it ignores the interrupt), the rest about 20 s.
stage tests 250 "$OUT/pytest.log" "$PY" -m pytest -m "gpu or tensorrt" -p no:cacheprovider -rA \
  --basetemp "$scratch/pytest" --junitxml "$OUT/pytest.xml"
stage bench 180 "$OUT/bench.log" "$PY" benchmarks/run.py --quick --device cpu --device cuda \
  --batch-size 1 --batch-size 256 --work "$scratch/work" --results "$OUT/bench"
tests=$(grep -E '^=+ .*(passed|failed|error|skipped).* =+$' "$OUT/pytest.log" | tail -1 | tr -d '=' | xargs)
echo "gpu_check on $cuda: tests: ${tests:-no summary}; $(paste -sd';' "$OUT/summary.txt" | sed 's/;/; /g'); reports in $OUT"
exit "$failed"
