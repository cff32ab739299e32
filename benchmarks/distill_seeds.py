"""Distillation against the same student trained alone, paired over several seeds.

    python benchmarks/distill_seeds.py                          # cnn, lstm, transformer; seeds 0,1,2
    python benchmarks/distill_seeds.py --models lstm --epochs 80 --feature-weight 1

One test split of 1000 samples moves by a few tenths of a point from seed to seed, about the size
of what distillation buys a student of 1/4 the teacher's size, so a single run proves nothing
either way. For every seed, `aiopt distill` trains the student with the teacher and the same
student (same initial weights, recipe and budget) without it; the report gives both per seed,
their means, the mean paired gain and on how many seeds distillation came out ahead.
Teachers come from the suite's cache (benchmarks/.work/base, trained there when missing).
Writes benchmarks/results/distill-<machine-id>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="cnn,lstm,transformer")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--width", type=float, default=0.45, help="student width (0.45 keeps under 1/4 of the parameters)")
    parser.add_argument("--epochs", type=int, default=None, help="default: the student's recipe")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--alpha", type=float, default=None)
    parser.add_argument("--feature-weight", type=float, default=None)
    parser.add_argument("--work", default=str(ROOT / ".work" / "base"))
    parser.add_argument("--results", default=str(ROOT / "results"))
    args = parser.parse_args(argv)

    from aiopt.artifacts import command_line
    from aiopt.machine import describe_machine
    from aiopt.compress.distill import DistillConfig, distill_checkpoint
    from aiopt.fileio import write_bytes_atomic
    from aiopt.reference_models.train import train_reference_model

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models.split(","):
        teacher = work / f"{name}.pt"
        if not teacher.exists():
            train_reference_model(f"{name}:base", str(teacher))
        runs = []
        for seed in (int(s) for s in args.seeds.split(",")):
            with tempfile.TemporaryDirectory() as scratch:
                config = DistillConfig(width=args.width, epochs=args.epochs, seed=seed, temperature=args.temperature,
                                       alpha=args.alpha, feature_weight=args.feature_weight)
                report = distill_checkpoint(teacher, Path(scratch) / "student.pt", config).report
            runs.append({"seed": seed, "distilled": report["student_accuracy"], "alone": report["student_alone_accuracy"]})
            print(f"{name} seed {seed}: distilled {runs[-1]['distilled']:.4f}, alone {runs[-1]['alone']:.4f}", file=sys.stderr)
        gains = [r["distilled"] - r["alone"] for r in runs]
        rows.append({
            "model": name, "teacher_accuracy": report["teacher_accuracy"], "param_ratio": report["param_ratio"],
            "temperature": report["temperature"], "alpha": report["alpha"], "feature_weight": report["feature_weight"],
            "epochs": report["epochs"], "runs": runs,
            "distilled_mean": statistics.fmean(r["distilled"] for r in runs), "alone_mean": statistics.fmean(r["alone"] for r in runs),
            "gain_mean": statistics.fmean(gains), "gain_stdev": statistics.stdev(gains) if len(gains) > 1 else None,
            "wins": sum(g > 0 for g in gains), "ties": sum(g == 0 for g in gains), "seeds": len(runs),
        })
    document = {"machine": describe_machine(), "command": command_line(), "width": args.width, "rows": rows}
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    stem = results / f"distill-{document['machine']['id']}"
    text = markdown(document)
    write_bytes_atomic(stem.with_suffix(".json"), (json.dumps(document, indent=2) + "\n").encode())
    write_bytes_atomic(stem.with_suffix(".md"), text.encode())
    print(text)
    return 0


def markdown(document: dict) -> str:
    lines = [f"## Distillation vs the same student alone (width {document['width']:g}, paired seeds)", "",
             f"`python benchmarks/{document['command']}`", "",
             "| model | teacher | student params | T / alpha / feature | epochs | distilled (mean) | alone (mean) | gain, mean ± sd | ahead on |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in document["rows"]:
        spread = f" ± {100 * row['gain_stdev']:.2f}" if row["gain_stdev"] is not None else ""
        lines.append(
            f"| {row['model']} | {100 * row['teacher_accuracy']:.1f} | {100 * row['param_ratio']:.0f}% | "
            f"{row['temperature']:g} / {row['alpha']:g} / {row['feature_weight']:g} | {row['epochs']} | "
            f"{100 * row['distilled_mean']:.2f} | {100 * row['alone_mean']:.2f} | {100 * row['gain_mean']:+.2f}{spread} pt | "
            f"{row['wins']} of {row['seeds']} seeds" + (f" ({row['ties']} tied)" if row["ties"] else "") + " |"
        )
    lines.append("")
    for row in document["rows"]:
        per_seed = ", ".join(f"seed {r['seed']}: {100 * r['distilled']:.1f} vs {100 * r['alone']:.1f}" for r in row["runs"])
        lines.append(f"- {row['model']}: {per_seed}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
