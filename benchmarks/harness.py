"""How much the bench harness itself costs, and how repeatable it is.

    python benchmarks/harness.py

1. Overhead: a ~100 us ONNX Runtime model timed by `measure_latency` through the Runner
   (input checks, dict outputs) vs a bare `session.run` loop timed the same way, interleaved
   over several rounds so drift hits both alike. Target: < 5% added.
2. Repeatability: the same `run_bench` twice in one process; p50s per record compared.
   Target: within 10%.
Writes benchmarks/results/harness-<machine-id>.json and prints a summary.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent


def _model(folder: Path) -> Path:
    """Two 256x256 MatMuls + ReLU: about 100 us per batch-16 call on one of our CPU cores."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1, w2 = (numpy_helper.from_array(rng.standard_normal((256, 256)).astype(np.float32) / 16, name) for name in ("w1", "w2"))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])],
        "overhead", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 256])], [w1, w2])
    path = folder / "overhead.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def overhead(rounds: int = 7) -> dict:
    from aiopt import runtime
    from aiopt.bench.latency import LatencyConfig, measure_latency, summarize

    with tempfile.TemporaryDirectory() as folder:
        runner = runtime.load(_model(Path(folder)), threads=1)
        feed = {"x": np.random.default_rng(1).standard_normal((16, 256)).astype(np.float32)}
        session = runner.session
        config = LatencyConfig(warmup=50, min_runs=200, min_time=0.5)
        harness, bare = [], []

        def bare_loop() -> float:
            for _ in range(config.warmup):
                session.run(None, feed)
            times, deadline = [], time.perf_counter() + config.min_time
            while len(times) < config.min_runs or time.perf_counter() < deadline:
                start = time.perf_counter()
                session.run(None, feed)
                times.append((time.perf_counter() - start) * 1e3)
            return summarize(times).p50

        for round_index in range(rounds):  # alternate which goes first, so drift favours neither
            order = (0, 1) if round_index % 2 == 0 else (1, 0)
            for which in order:
                if which == 0:
                    harness.append(measure_latency(lambda: runner(feed), config).p50)
                else:
                    bare.append(bare_loop())
    harness_ms, bare_ms = float(np.median(harness)), float(np.median(bare))
    return {"model_latency_us": round(bare_ms * 1e3, 1), "harness_p50_ms": harness_ms, "bare_p50_ms": bare_ms,
            "overhead": round(harness_ms / bare_ms - 1, 4), "rounds": rounds, "target": "< 0.05"}


def repeatability(artifacts: list[str]) -> dict:
    from aiopt.bench.latency import LatencyConfig
    from aiopt.bench.measure import BenchConfig, run_bench

    config = BenchConfig(batch_sizes=(1, 64), latency=LatencyConfig(warmup=10, min_runs=20, min_time=1.0), baseline=False)
    first, second = (run_bench(artifacts, config)["records"] for _ in range(2))
    pairs = [(a["label"], a["backend"], a["batch_size"], a["latency_ms"]["p50"], b["latency_ms"]["p50"]) for a, b in zip(first, second)]
    changes = [abs(b / a - 1) for *_, a, b in pairs]
    return {"records": [{"artifact": p[0], "backend": p[1], "batch_size": p[2], "p50_first_ms": p[3], "p50_second_ms": p[4]} for p in pairs],
            "max_relative_change": round(max(changes), 4), "target": "< 0.10"}


def main(argv: list[str]) -> int:
    from aiopt.bench.machine import describe_machine

    machine = describe_machine()
    result = {"machine": machine, "overhead": overhead()}
    if argv:
        result["repeatability"] = repeatability(argv)
    out = ROOT / "results" / f"harness-{machine['id']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
