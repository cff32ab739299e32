"""The compression pipeline on the reference models, measured side by side in one run.

    python benchmarks/compression.py            # base models, ~15 min on 2 CPU cores
    python benchmarks/compression.py --quick    # tiny models, a minute (CI)

For each model: train (or reuse the cached checkpoint), static INT8 (ONNX Runtime), channel
pruning 50% + fine-tune, distillation into a student of <= 1/4 the parameters, and on the CNN
the composed path prune -> distill -> INT8. Every artifact is then measured with the same
Runner + measure_latency against the FP32 PyTorch baseline, in this one process, so speedups
are same-run ratios. Writes benchmarks/results/compression-<machine>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny models and short budgets (CI smoke run)")
    parser.add_argument("--models", default="cnn,lstm,transformer")
    parser.add_argument("--work", default=str(ROOT / ".work"), help="where checkpoints are cached between runs")
    parser.add_argument("--results", default=str(ROOT / "results"))
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of timed runs per measurement")
    args = parser.parse_args(argv)

    from aiopt.bench.latency import LatencyConfig
    from aiopt.bench.measure import MeasureConfig, measure_artifact
    from aiopt.compress.cpu import detect_cpu

    size = "tiny" if args.quick else "base"
    work = Path(args.work) / size
    work.mkdir(parents=True, exist_ok=True)
    measure = MeasureConfig(batch_sizes=(1, 64), latency=LatencyConfig(warmup=10, min_runs=20, min_time=args.min_time))
    records, steps = [], []
    for name in args.models.split(","):
        artifacts = _build(name, size, work, args.quick, steps)
        baseline = None
        for label, path, backend in artifacts:
            for record in measure_artifact(path, backend, measure):
                record["model"], record["variant"] = name, label
                if label == "fp32":
                    baseline = baseline or {}
                    baseline[record["batch_size"]] = record["latency_ms"]["p50"]
                record["speedup_vs_baseline"] = round(baseline[record["batch_size"]] / record["latency_ms"]["p50"], 3)
                records.append(record)
                print(f"{name:12s} {label:24s} b{record['batch_size']:<3d} p50 {record['latency_ms']['p50']:8.3f} ms  "
                      f"x{record['speedup_vs_baseline']:<6.2f} acc {record['accuracy']}", file=sys.stderr)
    cpu = detect_cpu()
    machine = {"cpu": cpu.model, "cores": _cores(), "python": platform.python_version(), **_versions()}
    document = {"schema_version": 1, "machine": machine, "command": " ".join(sys.argv), "quick": args.quick, "steps": steps, "records": records}
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    stem = results / f"compression-{_machine_id(cpu.model)}{'-quick' if args.quick else ''}"
    stem.with_suffix(".json").write_text(json.dumps(document, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(document))
    print(markdown(document))
    return 0


def _build(name: str, size: str, work: Path, quick: bool, steps: list) -> list[tuple[str, Path, str | None]]:
    """Train/compress `name` and return (label, artifact, backend) to measure; cached files are reused."""
    from aiopt.compress.distill import DistillConfig, distill_checkpoint
    from aiopt.compress.prune import PruneConfig, prune_checkpoint
    from aiopt.compress.quantize import QuantizeConfig, quantize_artifact
    from aiopt.reference_models.train import train_reference_model

    spec = f"{name}:{size}"
    epochs = 2 if quick else None
    finetune = 1 if quick else 10
    fp32 = work / f"{name}.pt"

    def step(label: str, path: Path, make) -> Path:
        if not path.exists():
            start = time.perf_counter()
            result = make()
            steps.append({"model": name, "step": label, "seconds": round(time.perf_counter() - start, 1),
                          "report": getattr(result, "report", None) or {"accuracy": getattr(result, "accuracy", None)}})
        return path

    step("train", fp32, lambda: train_reference_model(spec, str(fp32), epochs=epochs))
    int8 = step("quantize", work / f"{name}.int8.onnx", lambda: quantize_artifact(fp32, work / f"{name}.int8.onnx"))
    pruned = step("prune", work / f"{name}.p50.pt", lambda: prune_checkpoint(
        fp32, work / f"{name}.p50.pt", PruneConfig(method="channel", sparsity=0.5, finetune_epochs=finetune)))
    student = step("distill", work / f"{name}.kd.pt", lambda: distill_checkpoint(
        fp32, work / f"{name}.kd.pt", DistillConfig(width=0.5, epochs=epochs, compare_alone=True)))
    artifacts = [("fp32", fp32, "torch"), ("int8-onnxruntime", int8, None), ("pruned-50%", pruned, "torch"), ("distilled-w0.5", student, "torch")]
    if name == "cnn":
        composed_student = step("distill-pruned", work / f"{name}.p50.kd.pt", lambda: distill_checkpoint(
            fp32, work / f"{name}.p50.kd.pt", DistillConfig(student=str(pruned), epochs=epochs or 20)))
        composed = step("quantize-composed", work / f"{name}.p50.kd.int8.onnx", lambda: quantize_artifact(
            composed_student, work / f"{name}.p50.kd.int8.onnx"))
        artifacts.append(("prune+distill+int8", composed, None))
    return artifacts


def markdown(document: dict) -> str:
    machine = document["machine"]
    lines = [f"## Compression results ({machine['cpu']}, {machine['cores']} cores)", "",
             f"torch {machine['torch']}, onnxruntime {machine['onnxruntime']}; p50 latency, same run; speedup vs FP32 PyTorch.", "",
             "| model | variant | backend | params | size | accuracy | p50 b1 (ms) | speedup b1 | p50 b64 (ms) | speedup b64 |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    rows: dict[tuple, dict] = {}
    for r in document["records"]:
        rows.setdefault((r["model"], r["variant"]), {})[r["batch_size"]] = r
    for (model, variant), by_batch in rows.items():
        one, many = by_batch.get(1), by_batch.get(64)
        first = one or many
        acc = f"{first['accuracy']:.4f}" if first["accuracy"] is not None else "-"
        lines.append(f"| {model} | {variant} | {first['backend']} | {first['params']:,} | {first['size_bytes'] / 1024:.1f} KiB | {acc} | "
                     f"{one['latency_ms']['p50']:.3f} | {one['speedup_vs_baseline']:.2f}x | {many['latency_ms']['p50']:.3f} | {many['speedup_vs_baseline']:.2f}x |")
    return "\n".join(lines) + "\n"


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _versions() -> dict:
    import importlib.metadata as md

    versions = {}
    for package in ("torch", "onnxruntime", "onnx", "torch-pruning"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    return versions


def _machine_id(cpu: str) -> str:
    import re

    return re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-")[:40] or "unknown-cpu"


if __name__ == "__main__":
    sys.exit(main())
