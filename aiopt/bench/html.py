"""The `aiopt bench` HTML report and its PNG plot files, from the bench JSON document (schema 1).

The page is one self-contained file: plots (drawn by bench/plots.py) are base64 PNG data URIs, the
CSS is inline.
"""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from aiopt.bench.plots import DASH, NO_ACCURACY, has_accuracy, model_figures, png_bytes, record_label, size_text
from aiopt.bench.report import BUDGET_TEXT, best_per_model


def _slugs(models: list[str]) -> list[str]:
    """A file-name-safe, distinct stem per model: cnn.pt -> cnn.pt, runs/a b.pt -> runs-a-b.pt."""
    stems: list[str] = []
    for model in models:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-.") or "model"
        stems.append(stem if stem not in stems else f"{stem}-{len(stems) + 1}")
    return stems


def write_plots(document: dict, folder: Path) -> list[Path]:
    """Write MODEL.latency_vs_accuracy.png, MODEL.size.png and MODEL.latency_by_batch.png per model
    (lineage root) into `folder`, always all three (a plot without data says so); return the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figures = model_figures(document)
    paths = []
    for slug, (_, plots) in zip(_slugs([model for model, _ in figures]), figures):
        for name, figure in plots.items():
            path = folder / f"{slug}.{name}.png"
            path.write_bytes(png_bytes(figure))
            paths.append(path)
    return paths


# --- the page -------------------------------------------------------------------------------

def _e(value) -> str:
    return html.escape(str(value))


def _digits(ms: float) -> int:
    return 3 if ms < 1 else 2 if ms < 100 else 0


def _ms(value, digits: int | None = None) -> str:
    """Milliseconds with about three significant digits (or `digits` decimals, to line up mean and std)."""
    if value is None:
        return DASH
    return f"{value:.{_digits(value) if digits is None else digits}f}"


def _count(value) -> str:
    if value is None:
        return DASH
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {suffix}"
    return f"{value:.0f}"


def _percent(value) -> str:
    return DASH if value is None else f"{value * 100:.1f}%"


def _throughput(value) -> str:
    return DASH if value is None else f"{value:,.0f}/s" if value >= 100 else f"{value:.3g}/s"


def _speedup(record: dict) -> str:
    value = record.get("speedup_vs_baseline")
    text = DASH if value is None else f"{value:.2f}\u00d7"
    if value is None and record.get("speedup_vs_parent") is not None:
        text = f"{record['speedup_vs_parent']:.2f}\u00d7 vs parent {Path(record['parent']).name}"
    return text + " (baseline)" if record.get("is_baseline") else text


def _gpu(gpu) -> str:
    if not gpu:
        return "none"
    if not isinstance(gpu, dict):
        return str(gpu)
    details = [f"{name} {gpu[k]}" for k, name in (("driver", "driver"), ("cuda", "CUDA"), ("compute_capability", "compute capability")) if gpu.get(k)]
    return f"{gpu.get('name', 'GPU')} ({', '.join(details)})" if details else str(gpu.get("name", "GPU"))


def _setting(value) -> str:
    if value is None:
        return DASH
    return ", ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def _machine_rows(document: dict) -> list[tuple[str, str]]:
    machine = document.get("machine") or {}
    rows = [("CPU", machine.get("cpu")), ("cores", machine.get("cores")), ("GPU", _gpu(machine.get("gpu")))]
    rows += [(name, machine.get(key) or "not installed") for name, key in
             (("Python", "python"), ("torch", "torch"), ("onnxruntime", "onnxruntime"), ("onnx", "onnx"), ("TensorRT", "tensorrt"))]
    rows += [("platform", machine.get("platform")), ("machine id", machine.get("id"))]
    known = {"cpu", "cores", "gpu", "python", "torch", "onnxruntime", "onnx", "tensorrt", "platform", "id"}
    rows += [(key, value) for key, value in machine.items() if key not in known]  # newer fields still show
    rows += [("created", document.get("created_at")), ("schema version", document.get("schema_version"))]
    return [(name, _setting(value)) for name, value in rows]


COLUMNS = ("artifact", "backend", "device", "batch", "p50 ms", "p90 ms", "p99 ms", "mean \u00b1 std ms", "throughput",
           "accuracy", "agreement", "speedup", "size", "params", "FLOPs", "peak memory", "skipped")


def _row(record: dict) -> str:
    lat = record.get("latency_ms") or {}
    label = record_label(record)
    artifact = _e(label) if label == record["artifact"] else f'{_e(label)}<br><small>{_e(record["artifact"])}</small>'
    mean = DASH if lat.get("mean") is None else f"{_ms(lat['mean'])} \u00b1 {_ms(lat.get('std') or 0, _digits(lat['mean']))}"
    cells = [_ms(lat.get("p50")), _ms(lat.get("p90")), _ms(lat.get("p99")), mean, _throughput(record.get("throughput")),
             _percent(record.get("accuracy")), _percent(record.get("agreement")), _speedup(record), size_text(record.get("size_bytes")),
             _count(record.get("params")), _count(record.get("flops")), size_text(record.get("peak_memory_bytes"))]
    skipped = record.get("skipped")
    if record.get("unsteady"):
        cells[0] += " \u26a0"
    return (f'<tr{" class=skipped" if skipped else " class=unsteady" if record.get("unsteady") else ""}><td class=text>{artifact}</td>'
            f'<td class=text>{_e(record.get("backend") or DASH)}</td><td class=text>{_e(record.get("device") or DASH)}</td>'
            f'<td>{_e(record.get("batch_size", DASH))}</td>' + "".join(f"<td>{_e(c)}</td>" for c in cells)
            + f'<td class=text>{_e(skipped or record.get("unsteady") or "")}</td></tr>')


CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 2em auto; max-width: 1200px; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 0.15em 1em; } dt { color: #666; } dd { margin: 0; }
code { background: #f4f4f4; padding: 0.1em 0.3em; border-radius: 3px; }
figure { margin: 1em 0; } img { max-width: 100%; height: auto; border: 1px solid #eee; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { padding: 0.3em 0.55em; border-bottom: 1px solid #e5e5e5; text-align: right; white-space: nowrap; }
th { background: #f7f7f7; position: sticky; top: 0; } td.text { text-align: left; } td.text small { color: #777; }
tr.unsteady td { background: #fff6e0; }
tr.skipped td { color: #999; font-style: italic; } tr.skipped td:last-child { white-space: normal; min-width: 20em; }
.note { background: #fff6e0; border-left: 4px solid #e0a800; padding: 0.4em 0.8em; }
"""

CAPTIONS = {
    "latency_vs_accuracy": "Latency vs accuracy per batch size, numbered as in the key below it; the dashed step line is the Pareto front "
                           "(nothing is both faster and more accurate than a circled point).",
    "size": "Size on disk per artifact.",
    "latency_by_batch": "Latency per batch size for each artifact and backend: p50, whisker up to p90, \u00d7 marks p99.",
}
# Nothing outside the page may load: the report must open offline, and any attempt shows as a console error.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _summary(document: dict) -> str:
    """Per model, device and batch size: the best artifact, its speedup, what it cost, its size."""
    bests = best_per_model(document)
    if not bests:
        return "<p>Nothing was measured.</p>"
    rows = []
    for b in bests:
        base = b.baseline or {}
        change = "" if b.accuracy_change is None else f" ({b.accuracy_change * 100:+.1f} pt)"
        cells = [
            (_e(b.model), "text"), (_e(b.device), "text"), (_e(b.batch_size), ""),
            (_e(record_label(b.best)) + (" <small>(the baseline)</small>" if b.best is b.baseline else ""), "text"), (_e(b.best["backend"]), "text"),
            (f"{_ms(base.get('latency_ms', {}).get('p50'))} &rarr; {_ms(b.best['latency_ms']['p50'])}" if base else _ms(b.best["latency_ms"]["p50"]), ""),
            ((f"<b>{b.speedup:.2f}\u00d7</b>" if b.speedup is not None else DASH) + (" \u26a0 unsteady" if b.unsteady else ""), ""),
            (f"{_percent(base.get('accuracy'))} &rarr; {_percent(b.best.get('accuracy'))}{change}" if base else _percent(b.best.get("accuracy")), ""),
            (f"{size_text(base.get('size_bytes'))} &rarr; {size_text(b.best.get('size_bytes'))}" if base else size_text(b.best.get("size_bytes")), ""),
        ]
        rows.append("<tr>" + "".join(f"<td class={kind}>{cell}</td>" if kind else f"<td>{cell}</td>" for cell, kind in cells) + "</tr>")
    header = ("model", "device", "batch", "best artifact", "backend", "p50 ms", "speedup", "accuracy", "size")
    return (f"<p>Best: the fastest artifact whose accuracy is within {_e(BUDGET_TEXT)} of the baseline's (FP32 PyTorch, its lineage's root); "
            f"speedup: same-run ratio of p50 latencies; before &rarr; after.</p>"
            f'<div class="scroll"><table class="summary"><thead><tr>{"".join(f"<th>{_e(c)}</th>" for c in header)}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _plots(document: dict) -> str:
    sections = []
    for model, figures in model_figures(document):
        images = "".join(
            f'<figure><img alt="{_e(model)}: {_e(name.replace("_", " "))}" src="data:image/png;base64,{base64.b64encode(png_bytes(figure)).decode("ascii")}">'
            f"<figcaption>{_e(CAPTIONS[name])}</figcaption></figure>"
            for name, figure in figures.items()
        )
        sections.append(f"<h3>{_e(model)}</h3>{images}")
    return "".join(sections)


def render_html(document: dict) -> str:
    """The whole report as one self-contained HTML page (plots inline as base64 PNG)."""
    records = document.get("records", [])
    settings = document.get("settings") or {}
    notes = []
    if not has_accuracy(document):
        notes.append(NO_ACCURACY)
    skipped = sum(1 for r in records if r.get("skipped"))
    if skipped:
        notes.append(f"{skipped} of {len(records)} records were skipped; the last column of the table says why.")
    if document.get("unsteady"):
        notes.append(f"\u26a0 {document['unsteady']}. The last column of the table names each.")
    machine = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in _machine_rows(document))
    units = {"min_time": " s"}
    setting = "".join(f"<dt>{_e(k.replace('_', ' '))}</dt><dd>{_e(_setting(v))}{units.get(k, '') if v is not None else ''}</dd>"
                      for k, v in settings.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>aiopt bench report {_e(document.get("created_at") or "")}</title><style>{CSS}</style></head><body>
<h1>aiopt bench report</h1>
<p>Command: <code>{_e(document.get("command") or DASH)}</code></p>
{"".join(f'<p class="note">{_e(n)}</p>' for n in notes)}
<h2>Summary</h2>{_summary(document)}
<h2>Plots per model</h2>{_plots(document)}
<h2>Machine</h2><dl>{machine}</dl>
<h2>Settings</h2><dl>{setting}</dl>
<h2>Records</h2>
<div class="scroll"><table><thead><tr>{"".join(f"<th>{_e(c)}</th>" for c in COLUMNS)}</tr></thead>
<tbody>{"".join(_row(r) for r in records)}</tbody></table></div>
<h2>Reading the table</h2>
<ul>
<li><b>speedup is a same-run ratio vs the baseline record</b> (marked &ldquo;baseline&rdquo;): the baseline's p50 latency divided by
this record's, at the same device and batch size, both measured in this run on this machine; above 1 is faster.
It does not carry over to other machines or runs.</li>
<li>p50/p90/p99 and mean &plusmn; std: latency of one batch in milliseconds, over the timed runs after warm-up.
Throughput: samples per second (batch size &times; 1000 / mean latency).</li>
<li>accuracy: top-1 on the evaluation data; agreement: share of inputs whose top-1 prediction matches the baseline's.
&mdash; means not measured (no data, unknown FLOPs, or a skipped record).</li>
<li>FLOPs: per sample (2 &times; multiply-accumulates); size: the file on disk; peak memory: growth of the process's resident memory while loading and running (CPU),
peak CUDA memory allocated (GPU).</li>
</ul>
</body></html>
"""
