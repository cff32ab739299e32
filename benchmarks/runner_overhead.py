"""What aiopt's Runner costs a call over the runtime's own call, on a model small enough that it shows.

    python benchmarks/runner_overhead.py                       # the base CNN, FP32 and static INT8 ONNX, batch 1
    python benchmarks/runner_overhead.py --model some.onnx -b 1 -b 8

Per ONNX file: one ONNX Runtime session, called three ways in interleaved rounds on the same input:
`InferenceSession.run(names, feed)` (what a user of ONNX Runtime writes), aiopt's OnnxRuntimeRunner
through `runtime.load` (input check + call + dict of outputs), and the same Runner handed a list
instead of a dict (the slower, converting check). Reports the median per-call time of each and the
Runner's cost over ORT's call in microseconds and percent. No figure here is asserted anywhere.
"""
from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="ONNX file(s) (default: the base CNN, FP32 and static INT8, built here)")
    parser.add_argument("-b", "--batch-size", type=int, action="append", help="default 1")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=2000, help="calls per timed block")
    args = parser.parse_args(argv)
    from aiopt import runtime

    models = args.model or _base_cnn_files(ROOT / ".work")
    for path in models:
        runner = runtime.load(path, backend="onnxruntime", threads=args.threads)
        session, names = runner.session, runner.output_names
        for batch in args.batch_size or [1]:
            feed = {spec.name: _input(spec, batch) for spec in runner.input_spec}
            as_list = list(feed.values())
            ways = {"ORT session.run": lambda: session.run(names, feed), "aiopt Runner (dict)": lambda: runner(feed),
                    "aiopt Runner (list)": lambda: runner(as_list)}
            times = {name: [] for name in ways}
            for round_ in range(args.rounds):  # interleaved, the order rotated each round
                order = list(ways)[round_ % len(ways):] + list(ways)[:round_ % len(ways)]
                for name in order:
                    times[name].append(min(timeit.repeat(ways[name], number=args.calls, repeat=3)) / args.calls * 1e6)
            median = {name: float(np.median(values)) for name, values in times.items()}
            base = median["ORT session.run"]
            print(f"{Path(path).name} batch {batch}, {args.threads} thread(s):")
            for name, value in median.items():
                print(f"  {name:22s} {value:8.2f} us  ({value - base:+.2f} us, {100 * (value / base - 1):+.1f}%)")
    return 0


def _input(spec, batch: int) -> np.ndarray:
    shape = [batch if not isinstance(d, int) else d for d in spec.shape]
    return np.random.default_rng(0).standard_normal(shape).astype(spec.dtype)


def _base_cnn_files(work: Path) -> list[str]:
    """The base CNN (trained once, cached where optimize.py and peers.py keep it) as FP32 and static INT8 ONNX."""
    import subprocess

    from optimize import _reference

    base = work / "base"
    base.mkdir(parents=True, exist_ok=True)
    checkpoint = _reference("cnn", base)["model"]
    files = [base / "overhead-cnn.fp32.onnx", base / "overhead-cnn.int8.onnx"]
    commands = [["export", str(checkpoint), "--format", "onnx"], ["quantize", str(checkpoint), "--method", "static", "--backend", "onnxruntime"]]
    for path, command in zip(files, commands):
        if not path.exists():
            subprocess.run([sys.executable, "-m", "aiopt", *command, "-o", str(path)], check=True, stdout=subprocess.DEVNULL)
    return [str(p) for p in files]


if __name__ == "__main__":
    raise SystemExit(main())
