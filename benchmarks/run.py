"""The benchmarks suite: the whole pipeline on the reference models, measured side by side.

    python benchmarks/run.py            # base models: train (cached), compress, bench (~15 min on 2 cores)
    python benchmarks/run.py --quick    # tiny CNN, short budgets: the CI smoke run

Per model: train (or reuse the cached checkpoint), FP32 ONNX, static INT8 (ONNX Runtime), channel pruning
50% + fine-tune, distillation into a student of about 1/4 the parameters, and on the CNN the
composed path prune -> distill -> INT8. Each model's artifacts are then measured in one
`aiopt bench` run against its FP32 PyTorch baseline, so every speedup is a same-run ratio.
Writes benchmarks/results/<machine-id>[-quick].{json,md,html}.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny models and short budgets (CI smoke run)")
    parser.add_argument("--models", default=None, help="comma-separated (default: cnn,lstm,transformer; --quick: cnn, since the\n"
                        "tiny LSTM and Transformer learn too little in a smoke budget to survive 50%% pruning's agreement check)")
    parser.add_argument("--device", action="append", help="cpu and/or cuda (default cpu)")
    parser.add_argument("--batch-size", type=int, action="append", help="default 1 and 64")
    parser.add_argument("--work", default=str(ROOT / ".work"), help="checkpoint cache, reused between runs")
    parser.add_argument("--results", default=str(ROOT / "results"))
    parser.add_argument("--min-time", type=float, default=None, help="seconds of timed runs per measurement")
    parser.add_argument("--threads", type=int, default=None, help="threads for PyTorch and ONNX Runtime (default: all cores)")
    parser.add_argument("--baseline", help="a previous report (JSON): exit 1 if anything regressed against it")
    parser.add_argument("--max-regression", type=float, default=0.10)
    parser.add_argument("--max-accuracy-drop", type=float, default=0.01)
    args = parser.parse_args(argv)

    from aiopt.artifacts import command_line
    from aiopt.bench import html, report
    from aiopt.measure.latency import LatencyConfig
    from aiopt.bench.measure import BenchConfig, run_bench
    from aiopt.fileio import write_bytes_atomic

    size = "tiny" if args.quick else "base"
    work = Path(args.work) / size
    work.mkdir(parents=True, exist_ok=True)
    config = BenchConfig(devices=tuple(args.device or ("cpu",)), batch_sizes=tuple(args.batch_size or (1, 64)),
                         latency=LatencyConfig(warmup=10, min_runs=20, min_time=args.min_time or (0.2 if args.quick else 1.0)), threads=args.threads)
    document, steps = None, []
    models = args.models or ("cnn" if args.quick else "cnn,lstm,transformer")
    for name in models.split(","):
        cuda_buckets = config.batch_sizes if any(d.startswith("cuda") for d in config.devices) else None
        artifacts = build_pipeline(name, size, work, args.quick, steps, cuda_buckets)
        result = run_bench([str(path) for path in artifacts.values()], config, command=command_line())
        labels = {str(path): f"{name} {variant}" for variant, path in artifacts.items()}
        for record in result["records"]:
            record["label"] = labels.get(record["artifact"], record["artifact"])
        document = result if document is None else {**document, "records": document["records"] + result["records"]}
        print(f"{name}: {len(result['records'])} records", file=sys.stderr)
    document["pipeline_steps"] = steps
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    stem = results / (document["machine"]["id"] + ("-quick" if args.quick else ""))
    violations = None
    if args.baseline:
        violations = report.compare(document, report.load_report(args.baseline), args.max_regression, args.max_accuracy_drop)
    text = report.markdown(document, violations)
    report.append_github_summary(text)
    write_bytes_atomic(stem.with_suffix(".json"), report.to_json(document).encode())
    write_bytes_atomic(stem.with_suffix(".md"), text.encode())
    write_bytes_atomic(stem.with_suffix(".html"), html.render_html(document).encode())
    print(text)
    print(f"wrote {stem}.json, .md, .html", file=sys.stderr)
    for violation in violations or ():
        print(f"regression: {violation.describe()}", file=sys.stderr)
    return 1 if violations else 0


def build_pipeline(name: str, size: str, work: Path, quick: bool, steps: list, cuda_buckets: tuple[int, ...] | None = None) -> dict[str, Path]:
    """Train and compress `name`; files already in `work` are reused (delete them to rebuild).
    With `cuda_buckets` (a CUDA run) the torch-cuda FP16 artifact joins, built for those batch sizes."""
    from aiopt.compress.distill import DistillConfig, distill_checkpoint
    from aiopt.compress.prune import PruneConfig, prune_checkpoint
    from aiopt.quantize.run import QuantizeConfig, quantize_artifact
    from aiopt.export.onnx import export_onnx
    from aiopt.reference_models import get_entry
    from aiopt.reference_models.train import train_reference_model

    # The suite tracks the static INT8 recipe over time; what the default picks is measured by benchmarks/peers.py.
    STATIC = QuantizeConfig(method="static")

    # Quick mode: tiny models, budgets just large enough to pass the agreement-with-parent guard.
    epochs = 3 if quick else None
    # The Transformer needs about 30 fine-tune epochs to recover from 50% channel pruning (README).
    finetune = {"cnn": 2, "lstm": 2, "transformer": 2} if quick else {"cnn": 10, "lstm": 10, "transformer": 30}
    distill_epochs = 8 if quick else None

    def step(label: str, path: Path, make, parent: Path | None = None) -> Path:
        """`path`, made unless cached; a cached artifact older than its parent is made again."""
        if path.exists() and parent is not None and path.stat().st_mtime < parent.stat().st_mtime:
            path.unlink()
        if not path.exists():
            print(f"{name}: {label} -> {path.name}", file=sys.stderr)
            start = time.perf_counter()
            make(path)
            steps.append({"model": name, "step": label, "artifact": path.name, "seconds": round(time.perf_counter() - start, 1)})
        return path

    fp32 = work / f"{name}.pt"
    if fp32.exists() and _recipe_epochs(fp32) != (epochs or get_entry(name).train_defaults["epochs"]):
        fp32.unlink()  # trained under another recipe: train again (and so remake what derives from it)
    fp32 = step("train", fp32, lambda out: train_reference_model(f"{name}:{size}", str(out), epochs=epochs))
    artifacts = {
        "fp32": fp32,
        # FP32 on ONNX Runtime: INT8's gain over the same runtime, apart from the change of runtime.
        "fp32 onnx": step("export", work / f"{name}.onnx", lambda out: export_onnx(fp32, out), fp32),
        "int8": step("quantize", work / f"{name}.int8.onnx", lambda out: quantize_artifact(fp32, out, STATIC), fp32),
        "pruned 50%": step("prune", work / f"{name}.p50.pt", lambda out: prune_checkpoint(
            fp32, out, PruneConfig(method="channel", sparsity=0.5, finetune_epochs=finetune[name])), fp32),
        "distilled w0.45": step("distill", work / f"{name}.kd.pt", lambda out: distill_checkpoint(
            fp32, out, DistillConfig(width=0.45, epochs=distill_epochs)), fp32),
    }
    if name == "lstm":
        # ORT runs the LSTM op itself in float even in a QDQ model; PyTorch's dynamic INT8 LSTM is the other route.
        artifacts["int8 torch"] = step("quantize torch", work / f"{name}.int8.ts.pt", lambda out: quantize_artifact(
            fp32, out, QuantizeConfig(backend="torch")), fp32)
    if cuda_buckets:
        from aiopt.export.torch_cuda import TorchCudaConfig, export_torch_cuda

        tag = "-".join(map(str, sorted(cuda_buckets)))
        artifacts["cuda fp16 graphs"] = step("export torch-cuda", work / f"{name}.cuda-fp16.b{tag}.pt2", lambda out: export_torch_cuda(
            fp32, out, TorchCudaConfig(precision="fp16", batch_sizes=tuple(cuda_buckets))), fp32)
    if name == "cnn":
        pruned = artifacts["pruned 50%"]
        student = step("distill pruned", work / f"{name}.p50.kd.pt", lambda out: distill_checkpoint(
            fp32, out, DistillConfig(student=str(pruned), epochs=distill_epochs)), pruned)
        artifacts["pruned+distilled+int8"] = step("quantize composed", work / f"{name}.p50.kd.int8.onnx", lambda out: quantize_artifact(student, out, STATIC), student)
    return artifacts


def _recipe_epochs(checkpoint: Path) -> int | None:
    from aiopt.artifacts import load_model

    return (load_model(checkpoint).metadata.get("training") or {}).get("epochs")


if __name__ == "__main__":
    sys.exit(main())
