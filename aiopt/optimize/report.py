"""What `aiopt optimize` leaves in OUTDIR besides the artifacts: report.json (the document the
CLI prints with --json), report.md, report.html (with the quality-vs-latency Pareto plot as a
data: URI) and reproduce.sh, the aiopt commands that rebuild the chosen artifact from MODEL."""
from __future__ import annotations

import base64
import html
import json
import os
from collections import Counter
from pathlib import Path

import aiopt
from aiopt.artifacts import command_line, now_iso
from aiopt.machine import describe_machine
from aiopt.bench.plots import new_figure, png_bytes
from aiopt.fileio import write_bytes_atomic
from aiopt.optimize.front import OBJECTIVE_LABELS, Row, closest
from aiopt.steps import command_line as step_command_line

SCHEMA_VERSION = 1


def write_json(path: Path, document: dict) -> None:
    write_bytes_atomic(path, (json.dumps(document, indent=2, default=str) + "\n").encode())


def write_reports(search, rows: list[Row], front: list[Row], chosen: Row | None, verified: dict | None, problem: str | None, loaded) -> dict:
    document = _document(search, rows, front, chosen, verified, problem)
    outdir = search.outdir
    write_json(outdir / "report.json", document)
    write_bytes_atomic(outdir / "report.md", markdown(document).encode())
    write_bytes_atomic(outdir / "report.html", render_html(document).encode())
    script = outdir / "reproduce.sh"
    if chosen is not None:
        write_bytes_atomic(script, reproduce_script(document).encode())
        os.chmod(script, 0o755)
    else:
        script.unlink(missing_ok=True)  # nothing to reproduce: an old script would name a stale choice
    return document


def _document(search, rows, front, chosen, verified, problem) -> dict:
    import time

    reference = search.reference
    states: dict[str, int] = {}
    for row in rows:  # a chain asked for again is a repeat, not a trial of its own
        state = ("repeated" if row.duplicate_of is not None else "interrupted" if row.interrupted else "lost" if row.lost
                 else row.state.lower())
        states[state] = states.get(state, 0) + 1
    best = None
    if chosen is not None:
        best = {"trial": chosen.number, "chain": chosen.chain, "params": chosen.params, "artifact": verified["path"],
                "built_as": chosen.artifact, "runtime": verified["runtime"], "quality": verified["quality"],
                "latency_ms": verified["latency_ms"], "reference_ms": verified["reference_ms"], "speedup": verified["speedup"],
                "size_bytes": verified["size_bytes"], "verified": "measured again as written to the output folder, on its runtime, on the held-out data",
                "commands": [_command(step) for step in chosen.steps]}
    return {
        "schema_version": SCHEMA_VERSION, "aiopt_version": aiopt.__version__, "created_at": now_iso(), "command": command_line(),
        "model": str(search.model), "model_path": str(search.model.resolve()), "target": search.config.target,
        "objective": search.config.objective, "objective_value": OBJECTIVE_LABELS[search.config.objective],
        "budget": {**reference.floor.to_dict(), "why": reference.metric_reason}, "batch_sizes": list(search.config.batch_sizes),
        "data": {"source": reference.data.source, "samples": len(reference.data)},
        "reference": {"path": str(reference.path), "what": "MODEL as FP32 ONNX on ONNX Runtime", "accuracy": reference.accuracy},
        "study": {"name": search.config.study_name, "storage": search.session.storage_label, "trials": states, "run_by_this_process": search.ran,
                  "lost": [{"trial": r.number, "chain": r.chain, "worker": r.worker, "retried_as": r.retried_as} for r in rows if r.lost]},
        "space": search.space.to_dict(), "machine": describe_machine(), "elapsed_seconds": round(time.monotonic() - search.start, 1),
        "best": best, "problem": problem, "front": [r.number for r in front],
        "closest": [r.number for r in _closest(rows)] if chosen is None else [],
        "trials": [r.to_dict() for r in rows],
    }


def _closest(rows):
    return closest(rows)


def _command(step: dict) -> str:
    return step_command_line(step["step"], step["source"], step["path"], step["args"])


def reproduce_script(document: dict) -> str:
    """The chosen chain as aiopt commands: MODEL and the work folder are the script's arguments."""
    best = document["best"]
    trial = next(t for t in document["trials"] if t["trial"] == best["trial"])
    lines = ["#!/usr/bin/env bash",
             f"# Rebuilds the artifact `aiopt optimize` chose (trial {best['trial']}: {best['chain']}) from MODEL.",
             "# Usage: reproduce.sh [MODEL] [WORK_FOLDER]; the last file written is the chosen artifact.",
             "set -euo pipefail",
             f"MODEL=\"${{1:-{document['model_path']}}}\"",
             'WORK="${2:-reproduce}"',
             'mkdir -p "$WORK"']
    source = '"$MODEL"'
    for step in trial["steps"]:
        output = f'"$WORK/{Path(step["path"]).name}"'
        lines.append(step_command_line(step["step"], source, output, step["args"]))
        source = output
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- Markdown

def _quality_text(row: dict, metric: str) -> str:
    quality = (row.get("measured") or {}).get("quality") or {}
    if not quality:
        return "-"
    if metric == "accuracy":
        return f"{quality['accuracy']:.4f} ({-quality['accuracy_drop'] * 100:+.2f} pt)"
    return f"{row['quality']:.4f}"


def _latency_text(row: dict, batch: int) -> str:
    measured = row.get("measured") or {}
    if str(batch) not in (measured.get("latency_ms") or {}):
        return "-"
    return f"{measured['latency_ms'][str(batch)]:.3f} ms ({measured['speedup'][str(batch)]:.2f}x)"


def _size_text(row: dict) -> str:
    size = (row.get("measured") or {}).get("size_bytes")
    return "-" if not size else f"{size / 1024:.1f} KiB" if size < 1 << 20 else f"{size / (1 << 20):.2f} MiB"


def _mark(row: dict, document: dict, repeats: int) -> str:
    best = document["best"]
    marks = (["**chosen**"] if best and best["trial"] == row["trial"] else []) + (["front"] if row["trial"] in document["front"] else [])
    if repeats:
        marks.append(f"asked for again {repeats}x")
    problem = (row.get("measured") or {}).get("problem") or row.get("reason")
    return ", ".join(marks + ([problem] if problem else []))


def _table_rows(document: dict) -> tuple[list[str], list[list[str]]]:
    metric = document["budget"]["metric"]
    batches = document["batch_sizes"]
    header = ["#", "chain", "ships as", "state", metric, *[f"p50 b{b} (vs FP32)" for b in batches], "size", "note"]
    # A chain the sampler asked for again is not run again: one row per chain, with its repeat count
    # (a search that explores a whole space asks for hundreds of repeats; report.json lists them all).
    repeats = Counter(t["duplicate_of"] for t in document["trials"] if t["duplicate_of"] is not None)
    body = [[str(t["trial"]), t["chain"], t.get("ships_as") or "-", t["state"].lower(), _quality_text(t, metric),
             *[_latency_text(t, b) for b in batches], _size_text(t), _mark(t, document, repeats[t["trial"]])]
            for t in document["trials"] if t["duplicate_of"] is None]
    return header, body


def markdown(document: dict) -> str:
    best = document["best"]
    lines = [f"## aiopt optimize: {document['model']}", "",
             f"Budget: {document['budget']['rule']} on {document['data']['source']} ({document['data']['samples']} samples); "
             f"objective: {document['objective']} ({document['objective_value']}); batch sizes {', '.join(map(str, document['batch_sizes']))}; "
             f"target {document['target']}.",
             f"Study `{document['study']['name']}` in `{document['study']['storage']}`: "
             + ", ".join(f"{n} {s}" for s, n in document["study"]["trials"].items()) + f"; {document['elapsed_seconds']:.0f} s.", ""]
    if best:
        speed = ", ".join(f"{v:.2f}x at batch {b}" for b, v in best["speedup"].items())
        lines += [f"**Chosen:** trial {best['trial']}, `{best['chain']}` on {best['runtime']} -> `{best['artifact']}`: {speed} vs the FP32 "
                  f"reference (same-run ratios), verified as written.", ""]
    else:
        lines += [f"**No candidate meets the budget.** {document['problem']}", ""]
    header, body = _table_rows(document)
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body]
    if best:
        lines += ["", "Rebuild the chosen artifact (reproduce.sh):", "", "```sh", *best["commands"], "```"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- HTML

def pareto_plot(document: dict) -> bytes:
    """Quality against the objective: every measured trial, the front joined, the choice starred,
    the budget as a dashed line. PNG bytes."""
    metric = document["budget"]["metric"]
    size = document["objective"] == "size"
    figure = new_figure(7.0, 4.4)
    ax = figure.subplots()
    measured = [t for t in document["trials"] if t["state"] == "COMPLETE" and t["objective"] is not None and t["duplicate_of"] is None]

    def x(t: dict) -> float:
        return t["objective"] / 1024 if size else t["objective"]

    for meets, style in ((True, {"color": "tab:blue"}), (False, {"facecolors": "none", "edgecolors": "tab:gray"})):
        points = [t for t in measured if t["meets_budget"] == meets]
        ax.scatter([x(t) for t in points], [t["quality"] for t in points], s=36, label="within budget" if meets else "outside budget", **style)
    for t in measured:
        ax.annotate(str(t["trial"]), (x(t), t["quality"]), textcoords="offset points", xytext=(4, 3), fontsize=7)
    front = sorted((t for t in measured if t["trial"] in document["front"]), key=x)
    if front:
        ax.plot([x(t) for t in front], [t["quality"] for t in front], color="tab:orange", lw=1.2, label="Pareto front")
    best = document["best"]
    if best:
        chosen = next(t for t in measured if t["trial"] == best["trial"])
        ax.scatter([x(chosen)], [chosen["quality"]], marker="*", s=220, color="tab:red", zorder=5, label=f"chosen (#{best['trial']})")
    floor = _budget_line(document)
    if floor is not None:
        ax.axhline(floor, color="tab:red", ls="--", lw=0.8, label="budget")
    ax.set_xlabel("size (KiB)" if size else f"{document['objective_value']} (lower is faster)")
    ax.set_ylabel(metric)
    ax.set_title("quality vs " + ("size" if size else "latency") + f" ({len(measured)} measured trials)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return png_bytes(figure)


def _budget_line(document: dict) -> float | None:
    budget = document["budget"]
    if budget["metric"] == "cosine":
        return budget["min_cosine"]
    if budget["metric"] == "agreement":
        return 1 - budget["max_accuracy_drop"]
    accuracy = document["reference"]["accuracy"]
    return None if accuracy is None else accuracy - budget["max_accuracy_drop"]


def render_html(document: dict) -> str:
    e = html.escape
    plot = base64.b64encode(pareto_plot(document)).decode()
    header, body = _table_rows(document)
    best = document["best"]
    summary = (f"<p><b>Chosen:</b> trial {best['trial']}, <code>{e(best['chain'])}</code> on {e(best['runtime'])} &rarr; "
               f"<code>{e(best['artifact'])}</code>: " + ", ".join(f"{v:.2f}&times; at batch {e(b)}" for b, v in best["speedup"].items())
               + " vs the FP32 reference (same-run ratios), verified as written.</p>") if best else f"<p><b>No candidate meets the budget.</b> {e(document['problem'])}</p>"
    commands = f"<h2>Reproduce</h2><pre>{e(chr(10).join(best['commands']))}</pre>" if best else ""
    rows = "".join("<tr>" + "".join(f"<td>{e(cell)}</td>" for cell in row) + "</tr>" for row in body)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>aiopt optimize: {e(document['model'])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:left}}th{{background:#f3f3f3}}pre{{background:#f6f6f6;padding:8px;overflow-x:auto}}</style>
</head><body>
<h1>aiopt optimize: {e(document['model'])}</h1>
<p>Budget: {e(document['budget']['rule'])} on {e(document['data']['source'])} ({document['data']['samples']} samples); objective: {e(document['objective'])}
({e(document['objective_value'])}); target {e(document['target'])}; study <code>{e(document['study']['name'])}</code> in <code>{e(document['study']['storage'])}</code>.</p>
{summary}
<img alt="quality vs latency, Pareto front" src="data:image/png;base64,{plot}">
<h2>Trials</h2>
<table><tr>{''.join(f'<th>{e(h)}</th>' for h in header)}</tr>{rows}</table>
{commands}
</body></html>
"""
