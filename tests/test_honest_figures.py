"""Figures that say when they cannot be trusted, and speedups against the parent measured in the
same run (issue 22). No timing is asserted: the flags are checked on synthetic samples."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from conftest import invoke_cli


def test_a_wide_spread_or_disagreeing_rounds_flag_a_figure():
    from aiopt.measure.latency import summarize

    steady = summarize([1.0, 1.05, 0.98, 1.1, 1.02, 0.99] * 5, rounds=[[1.0, 1.05], [0.98, 1.1], [1.02, 0.99]])
    assert steady.unsteady is None and steady.to_dict()["unsteady"] is None
    # the torch runner on a busy machine: p50 0.30 ms, p90 121 ms
    busy = summarize([0.30] * 8 + [121.0] * 2)
    assert "p90" in busy.unsteady and busy.to_dict()["unsteady"] == busy.unsteady
    rounds = [[1.0] * 20, [1.05] * 20, [1.6] * 5]  # the last round ran while something else did
    drifting = summarize([t for part in rounds for t in part], rounds=rounds)
    assert "rounds" in drifting.unsteady and "p90" not in drifting.unsteady


def test_an_unsteady_measurement_is_taken_again_once():
    from aiopt.measure.latency import LatencyConfig, measure_interleaved_steady

    calls = {"n": 0}

    def spiky() -> None:  # every third run stalls, as when another process takes the core
        calls["n"] += 1
        end = time.perf_counter() + (0.01 if calls["n"] % 3 == 0 else 0.0005)
        while time.perf_counter() < end:
            pass

    config = LatencyConfig(warmup=1, min_runs=12, min_time=0.0, rounds=2)
    stats, remeasured = measure_interleaved_steady([(spiky, False)], config)
    assert remeasured and stats[0].unsteady is not None and len(stats[0].round_p50) == 2


def _mlp(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(0, 0.1, shape).astype(np.float32), name) for name, shape in (("w1", (64, 128)), ("w2", (128, 10)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])], initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_bench_gives_the_speedup_against_the_parent_in_the_same_run(tmp_path):
    parent = _mlp(tmp_path / "mlp.onnx")
    result = invoke_cli("quantize", str(parent), "--method", "dynamic")
    assert result.returncode == 0, result.stderr
    child = tmp_path / "mlp.int8.onnx"
    report = tmp_path / "r.json"
    result = invoke_cli("bench", str(parent), str(child), "-b", "1", "--warmup", "1", "--min-runs", "3", "--min-time", "0.05", "--rounds", "1",
                        "--json", str(report), "--markdown", str(tmp_path / "r.md"))
    assert result.returncode == 0, result.stderr
    records = {Path(r["artifact"]).name: r for r in json.loads(report.read_text())["records"]}
    assert records["mlp.int8.onnx"]["parent"] == str(parent) and records["mlp.onnx"]["parent"] is None
    ratio = records["mlp.onnx"]["latency_ms"]["p50"] / records["mlp.int8.onnx"]["latency_ms"]["p50"]
    assert abs(records["mlp.int8.onnx"]["speedup_vs_parent"] - ratio) < 1e-3 * ratio
    assert "vs parent mlp.onnx" in result.stdout and "vs parent mlp.onnx" in (tmp_path / "r.md").read_text()


def test_reports_flag_unsteady_records_and_headlines():
    from aiopt.bench.html import render_html
    from aiopt.bench.report import headline, markdown

    def record(artifact: str, p50: float, p90: float, baseline: bool, unsteady: str | None) -> dict:
        return {"artifact": artifact, "label": artifact, "backend": "onnxruntime", "device": "cpu", "batch_size": 64, "is_baseline": baseline,
                "baseline": "cnn.pt", "skipped": None, "accuracy": 0.9, "agreement": None, "throughput": 64e3 / p50, "size_bytes": 1000,
                "params": 10, "flops": None, "peak_memory_bytes": None, "speedup_vs_baseline": None if baseline else 0.3 / p50,
                "latency_ms": {"p50": p50, "p90": p90, "p99": p90, "mean": p50, "std": 0.0, "unsteady": unsteady}, "unsteady": unsteady}

    document = {"schema_version": 1, "command": "aiopt bench", "settings": {"threads": 2, "warmup": 1, "min_runs": 1, "min_time": 1, "rounds": 1},
                "machine": {"cpu": "cpu", "cores": 2, "python": "3", "gpu": None}, "unsteady": "1 of 2 figures are unsteady",
                "records": [record("cnn.pt", 0.30, 0.32, True, None), record("cnn.int8.onnx", 0.12, 0.13, False, None),
                            record("cnn.p50.pt", 140.0, 150.0, False, "machine busy? rounds' p50 differ 9.0x")]}
    # every unsteady row is marked in the tables ...
    assert "⚠ unsteady" in markdown(document) and "rounds' p50 differ" in markdown(document)
    page = render_html(document)
    assert "class=unsteady" in page and ("rounds&#x27; p50 differ" in page or "rounds' p50 differ" in page)
    # ... but a candidate 1000x slower than the best cannot have changed the verdict: the headline stands
    assert "cnn.int8.onnx" in headline(document) and "UNSTEADY" not in headline(document)
    # an unsteady candidate within reach of the best, or an unsteady best, flags the headline
    document["records"][2] = record("cnn.p50.pt", 0.15, 0.40, False, "machine busy? p90 2.7x p50")
    assert "UNSTEADY" in headline(document) and "cnn.p50.pt" in headline(document)
    document["records"][2] = record("cnn.p50.pt", 140.0, 150.0, False, None)
    document["records"][1] = record("cnn.int8.onnx", 0.12, 0.30, False, "machine busy? p90 2.5x p50")
    assert "UNSTEADY" in headline(document)


def test_default_batch_sizes_shrink_when_one_run_would_take_seconds():
    from aiopt.measure.latency import affordable_batch_sizes

    def slow(batch: int) -> None:  # 10 ms per sample: batch 64 would take 0.64 s against a budget of 0.2 s
        time.sleep(0.01 * batch)

    sizes, note = affordable_batch_sizes(slow, (1, 64), seconds=0.2)
    assert sizes[0] == 1 and 1 < max(sizes) < 64 and "pass -b" in note and "batch 64" in note
    assert affordable_batch_sizes(lambda batch: None, (1, 64), seconds=0.2) == ((1, 64), None)
