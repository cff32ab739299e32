"""`aiopt bench`: real measurements of tiny models; the report schema, skips, the CI gate."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import invoke_cli

from aiopt.measure.latency import LatencyConfig, measure_latency
from aiopt.bench.report import Violation, compare

FAST = ("--warmup", "1", "--min-runs", "3", "--min-time", "0.02")
LATENCY_KEYS = {"mean", "std", "p50", "p90", "p99", "min", "max", "runs"}
RECORD_KEYS = {"artifact", "backend", "device", "batch_size", "latency_ms", "throughput", "accuracy", "agreement", "size_bytes",
               "params", "flops", "peak_memory_bytes", "speedup_vs_baseline", "load_seconds", "skipped"}


@pytest.fixture(scope="module")
def family(tiny_cnn, tmp_path_factory) -> dict[str, Path]:
    """A trained checkpoint and its INT8 and static-batch ONNX descendants, in one folder."""
    from aiopt.quantize.run import QuantizeConfig, quantize_artifact
    from aiopt.export.onnx import OnnxExportConfig, export_onnx

    folder = tmp_path_factory.mktemp("bench")
    fp32 = folder / "cnn.pt"
    fp32.write_bytes(tiny_cnn.read_bytes())
    int8 = folder / "cnn.int8.onnx"
    quantize_artifact(fp32, int8, QuantizeConfig(method="static"))
    static = folder / "cnn.static.onnx"
    export_onnx(fp32, static, OnnxExportConfig(dynamic_batch=False))
    return {"fp32": fp32, "int8": int8, "static": static, "folder": folder}


def test_measure_latency_keeps_every_run_and_orders_percentiles():
    stats = measure_latency(lambda: time.sleep(0.001), LatencyConfig(warmup=2, min_runs=15, min_time=0.0))
    assert stats.runs == 15
    assert stats.min <= stats.p50 <= stats.p90 <= stats.p99 <= stats.max
    assert stats.min >= 1.0  # milliseconds: each run sleeps 1 ms


def test_bench_finds_the_baseline_through_the_lineage_and_writes_reports(family, tiny_cnn, tmp_path):
    report, summary = tmp_path / "r.json", tmp_path / "r.md"
    result = invoke_cli("bench", str(family["int8"]), *FAST, "--json", str(report), "--markdown", str(summary), "--threads", "1")
    assert result.returncode == 0, result.stderr
    document = json.loads(report.read_text())
    assert document["schema_version"] == 1 and document["settings"]["threads"] == 1
    assert {"cpu", "cores", "python", "torch", "onnxruntime", "onnx", "tensorrt", "gpu"} <= set(document["machine"])
    assert "aiopt bench" in document["command"]
    records = document["records"]
    assert [(Path(r["artifact"]).name, r["backend"], r["batch_size"]) for r in records] == [
        (tiny_cnn.name, "torch", 1), (tiny_cnn.name, "torch", 64), ("cnn.int8.onnx", "onnxruntime", 1), ("cnn.int8.onnx", "onnxruntime", 64)]
    for record in records:
        assert RECORD_KEYS <= set(record) and LATENCY_KEYS <= set(record["latency_ms"]) and record["skipped"] is None
        assert 0 < record["accuracy"] <= 1 and record["latency_ms"]["runs"] >= 3 and record["throughput"] > 0
    baseline, int8 = records[0], records[2]
    assert baseline["is_baseline"] and baseline["speedup_vs_baseline"] == 1.0 and baseline["agreement"] == 1.0
    assert int8["agreement"] > 0.9 and int8["speedup_vs_baseline"] > 0
    assert int8["flops"] == baseline["flops"] > 0 and int8["size_bytes"] < baseline["size_bytes"]
    text = summary.read_text()
    assert "cnn.int8.onnx" in text and "| p50 ms |" in text


def test_absent_backends_and_devices_are_skipped_with_a_reason(family, tmp_path):
    report = tmp_path / "r.json"
    result = invoke_cli("bench", str(family["int8"]), *FAST, "--no-baseline", "--backend", "onnxruntime", "--backend", "tensorrt",
                     "--device", "cpu", "--device", "cuda", "-b", "2", "--json", str(report))
    assert result.returncode == 0, result.stderr
    records = json.loads(report.read_text())["records"]
    measured = [r for r in records if not r["skipped"]]
    assert [(r["backend"], r["device"]) for r in measured] == [("onnxruntime", "cpu")]
    reasons = " ".join(r["skipped"] for r in records if r["skipped"])
    assert "TensorRT" in reasons
    import torch

    if not torch.cuda.is_available():
        assert "cuda" in reasons.lower()


def test_a_batch_size_the_model_does_not_allow_is_skipped(family, tmp_path):
    report = tmp_path / "r.json"
    result = invoke_cli("bench", str(family["static"]), *FAST, "--no-baseline", "-b", "1", "-b", "8", "--json", str(report))
    assert result.returncode == 0, result.stderr
    records = json.loads(report.read_text())["records"]
    assert records[0]["skipped"] is None and "fixed at 1" in records[1]["skipped"]


def test_regression_gate_fails_with_a_list_and_writes_the_job_summary(family, tmp_path):
    first = tmp_path / "old.json"
    assert invoke_cli("bench", str(family["fp32"]), *FAST, "-b", "1", "--json", str(first)).returncode == 0
    original = first.read_text()
    old = json.loads(original)
    for record in old["records"]:
        record["latency_ms"]["p50"] /= 100  # the baseline was 100x faster: we regressed
        record["accuracy"] += 0.05
    slower = tmp_path / "slower.json"
    slower.write_text(json.dumps(old))
    summary = tmp_path / "summary.md"
    result = invoke_cli("bench", str(family["fp32"]), *FAST, "-b", "1", "--baseline", str(slower), env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert result.returncode == 1, result.stderr
    assert "regression" in result.stderr and "p50 latency" in result.stderr and "accuracy" in result.stderr
    assert "### Regression gate" in summary.read_text()
    # Against its own earlier report, with a tolerance no shared machine's noise reaches: passes.
    same = invoke_cli("bench", str(family["fp32"]), *FAST, "-b", "1", "--baseline", str(first), "--max-regression", "1e6")
    assert same.returncode == 0, same.stderr


def test_compare_matches_records_and_reports_missing_ones():
    def doc(p50, accuracy, skipped=None):
        return {"records": [{"artifact": "m.onnx", "backend": "onnxruntime", "device": "cpu", "batch_size": 1,
                             "latency_ms": {"p50": p50}, "accuracy": accuracy, "skipped": skipped}]}

    assert compare(doc(1.05, 0.90), doc(1.0, 0.90)) == []
    slower = compare(doc(1.2, 0.90), doc(1.0, 0.90))
    assert [v.metric for v in slower] == ["latency"] and "+20.0%" in slower[0].describe()
    assert [v.metric for v in compare(doc(1.0, 0.85), doc(1.0, 0.90))] == ["accuracy"]
    missing = compare(doc(None, None, skipped="no TensorRT"), doc(1.0, 0.9))
    assert isinstance(missing[0], Violation) and missing[0].metric == "missing"


@pytest.mark.parametrize(
    ("content", "expected"),
    [('{"schema_version": 99, "records": []}', "schema version 99"), ("not json", "not valid JSON")],
)
def test_a_baseline_of_another_schema_is_refused(family, tmp_path, content, expected):
    old = tmp_path / "old.json"
    old.write_text(content)
    result = invoke_cli("bench", str(family["fp32"]), *FAST, "--baseline", str(old))
    assert result.returncode == 2 and expected in result.stderr


def test_data_that_does_not_fit_is_refused_and_nothing_is_written(family, tmp_path):
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((4, 13), np.float32), y=np.zeros(4, np.int64))
    report = tmp_path / "r.json"
    result = invoke_cli("bench", str(family["fp32"]), *FAST, "--data", str(data), "--json", str(report))
    assert result.returncode == 2 and "expects" in result.stderr
    assert not report.exists()


def test_bad_options_are_refused(family):
    assert invoke_cli("bench", str(family["fp32"]), "-b", "0").returncode == 2
    assert invoke_cli("bench", str(family["fp32"]), "--backend", "tvm").returncode == 2
    missing = invoke_cli("bench", str(family["folder"] / "nope.onnx"))
    assert missing.returncode == 2 and "nope.onnx" in missing.stderr


def test_interleaved_rounds_alternate_and_keep_every_run():
    from aiopt.measure.latency import measure_interleaved

    calls: list[str] = []
    config = LatencyConfig(warmup=2, min_runs=9, min_time=0.0, rounds=3)
    first, second = measure_interleaved([(lambda: calls.append("a"), False), (lambda: calls.append("b"), False)], config)
    assert first.runs == second.runs == 9  # 3 rounds x 3 timed runs each
    # warm-up of both, then three slices each, alternating: a's slice, b's slice, a's, ...
    slices = [c for i, c in enumerate(calls) if i == 0 or c != calls[i - 1]]
    assert slices == ["a", "b"] * 4
