"""A forced recipe measured against its parent: accuracy of both, agreement judged per output by
what it is, and a quick same-run latency ratio (the ONNX Runtime and the PyTorch forced paths)."""
from __future__ import annotations

from aiopt.evaluate import accuracy, run_batches
from aiopt.measure.deployed import batch_feed
from aiopt.measure.latency import LatencyConfig, measure_latency
from aiopt.measure.quality import QualityFloor, check_against_parent, compare_all, judge_outputs, metric_for, output_kind
from aiopt.specs import TensorSpec


def measure_against_parent(reference_runner, runner, data, spec, latency_batch: int, what: str, metadata: dict | None = None) -> dict:
    """Accuracy of both, agreement of the candidate with the reference (NaN and collapse refused,
    judged by what the output is: top-1 for class scores, cosine for embeddings), and a quick
    same-run latency ratio."""
    references, candidates = run_batches(reference_runner, data), run_batches(runner, data)
    reference, candidate = references[0], candidates[0]
    kind, _ = output_kind(metadata, runner.output_names[0], reference.shape)
    # every output judged by what it is, beside the first output's collapse guard
    judges = judge_outputs(metadata, [TensorSpec(n, ()) for n in runner.output_names], references, data.labels is not None)
    floor = QualityFloor(metric_for(judges[0], data.labels is not None), judges=judges)
    judged = compare_all(references, candidates, judges, data.labels)
    for judge in judges:
        judged["outputs"][judge.name]["verdict"] = floor.output_problem(judge, judged["outputs"][judge.name]) or "ok"
    report = {
        "agreement_with_parent": {**check_against_parent(reference, candidate, what, "agreement" if kind == "classification" else "cosine"),
                                  "outputs": judged["outputs"]},
        "fp32_accuracy": accuracy(reference, data.labels) if data.labels is not None else None,
        "accuracy": accuracy(candidate, data.labels) if data.labels is not None else None,
        "eval_data": data.source,
        "samples": len(data),
        "latency": _latency_ratio(reference_runner, runner, data, spec, latency_batch),
    }
    if report["accuracy"] is not None:
        report["accuracy_drop"] = round(report["fp32_accuracy"] - report["accuracy"], 6)
    return report


def _latency_ratio(reference_runner, runner, data, spec, batch: int) -> dict:
    feed = batch_feed(data, spec, batch)
    batch = len(next(iter(feed.values())))
    quick = LatencyConfig(warmup=5, min_runs=10, min_time=0.5)
    fp32 = measure_latency(lambda: reference_runner(feed), quick)
    quantized = measure_latency(lambda: runner(feed), quick)
    return {"batch_size": batch, "fp32_p50_ms": fp32.p50, "p50_ms": quantized.p50, "speedup": round(fp32.p50 / quantized.p50, 3),
            "note": f"quick check on {runner.backend} CPU; use aiopt bench for figures"}
