"""The `aiopt bench` HTML report and its PNG plots, from the bench JSON document (schema 1).

matplotlib is imported inside the functions that draw (`import aiopt` must stay light), and only
through `Figure` + `FigureCanvasAgg`: no pyplot, so no GUI backend and no global figure state.
The page is one self-contained file: plots are base64 PNG data URIs, the CSS is inline.
"""
from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

DPI = 110
PLOTS = ("latency_vs_accuracy", "size", "latency_by_batch")
NO_ACCURACY = "no accuracy data: pass --data"
DASH = "\u2014"


# --- reading the document -------------------------------------------------------------------

def _label(record: dict) -> str:
    return record.get("label") or record["artifact"]


def _series(record: dict) -> str:
    """One plotted series per (artifact, backend, device); the device only when it is not the CPU."""
    where = record.get("backend") or "?"
    if record.get("device") not in (None, "cpu"):
        where += f", {record['device']}"
    return f"{_label(record)} [{where}]"


def _measured(document: dict) -> list[dict]:
    return [r for r in document.get("records", []) if not r.get("skipped") and (r.get("latency_ms") or {}).get("p50") is not None]


def _has_accuracy(document: dict) -> bool:
    return any(r.get("accuracy") is not None for r in _measured(document))


def pareto_front(points: list) -> list:
    """The points (latency, accuracy, ...) that no other point beats: none is at least as fast and
    at least as accurate. Sorted by increasing latency (so accuracy increases along it too)."""
    front, best = [], -math.inf
    # fastest first; at equal latency the most accurate first, so its slower-or-equal twins drop out
    for point in sorted(points, key=lambda p: (p[0], -p[1])):
        if point[1] > best:
            front.append(point)
            best = point[1]
    return front


# --- plots ----------------------------------------------------------------------------------

def _text(value: str) -> str:
    return value.replace("$", r"\$")  # a `$` in a file name would otherwise start mathtext


def _colours(document: dict) -> dict[str, object]:
    """The same colour for a series in every plot, in the order the records list them."""
    from matplotlib import colormaps

    names = list(dict.fromkeys(_series(r) for r in document.get("records", [])))
    cmap = colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)  # attaches the Agg canvas: savefig never looks for another backend
    return figure


def _empty(figure, title: str, message: str) -> None:
    ax = figure.subplots()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="0.4")
    ax.set_axis_off()


def _log_if_wide(ax, values: list[float], axis: str) -> None:
    """Log scale when the values span more than 10x, with plain tick labels (0.1, 1, 10: not 10^-1)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > 10:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        scale = ax.xaxis if axis == "x" else ax.yaxis
        scale.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 1-2-5 ticks: a decade or two still gets labels
        scale.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        scale.set_minor_formatter(NullFormatter())


def _plot_latency_vs_accuracy(document: dict, colours: dict):
    from matplotlib.ticker import PercentFormatter

    points = [r for r in _measured(document) if r.get("accuracy") is not None]
    batches = sorted({r["batch_size"] for r in points})
    if not batches:
        figure = _figure(6.5, 3.0)
        _empty(figure, "Latency vs accuracy", NO_ACCURACY)
        return figure
    # one subplot per batch size: latencies at different batch sizes are not comparable
    cols = min(len(batches), 2)
    rows = math.ceil(len(batches) / cols)
    figure = _figure(6.0 * cols, 4.2 * rows)
    axes = figure.subplots(rows, cols, squeeze=False).ravel()
    for ax, batch in zip(axes, batches):
        here = [(r["latency_ms"]["p50"], r["accuracy"], r) for r in points if r["batch_size"] == batch]
        front = pareto_front(here)
        for x, y, record in here:
            ax.scatter(x, y, s=36, color=colours[_series(record)], zorder=3)
            ax.annotate(_text(_series(record)), (x, y), xytext=(5, 4), textcoords="offset points", fontsize=7)
        xs = [p[0] for p in front] + [max(p[0] for p in here)]  # the front holds until the slowest point
        ys = [p[1] for p in front] + [front[-1][1]]
        ax.step(xs, ys, where="post", color="0.2", linewidth=1, linestyle="--", zorder=2, label="Pareto front")
        ax.scatter([p[0] for p in front], [p[1] for p in front], s=110, facecolors="none", edgecolors="black", linewidths=1.5, zorder=4)
        _log_if_wide(ax, [p[0] for p in here], "x")
        ax.margins(x=0.15, y=0.1)
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1))
        ax.set_xlabel("p50 latency (ms)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"batch {batch}: lower latency and higher accuracy is better", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize=7)
    for ax in axes[len(batches):]:
        ax.set_axis_off()
    figure.suptitle("Latency vs accuracy (circled: on the Pareto front)")
    return figure


def _unit(largest: float) -> tuple[str, float]:
    return ("MiB", 1024.0**2) if largest >= 1024**2 else ("KiB", 1024.0)


def _plot_size(document: dict):
    sizes: dict[str, int] = {}  # one bar per artifact: the size does not depend on backend or batch
    for record in document.get("records", []):
        if record.get("size_bytes") is not None:
            sizes.setdefault(_label(record), record["size_bytes"])
    if not sizes:
        figure = _figure(6.5, 2.5)
        _empty(figure, "Size on disk", "no size data")
        return figure
    unit, scale = _unit(max(sizes.values()))
    figure = _figure(7.0, 1.2 + 0.4 * len(sizes))
    ax = figure.subplots()
    names, values = list(sizes), [v / scale for v in sizes.values()]
    bars = ax.barh(range(len(names)), values, color="#4c72b0")
    ax.bar_label(bars, labels=[_bytes(v) for v in sizes.values()], padding=3, fontsize=8)  # each in its own unit
    ax.set_yticks(range(len(names)), [_text(n) for n in names], fontsize=8)
    ax.invert_yaxis()  # first artifact on top, as in the table
    ax.set_xlim(0, max(values) * 1.25)  # room for the value labels
    ax.set_xlabel(f"size on disk ({unit})")
    ax.set_title("Size on disk")
    ax.grid(True, axis="x", alpha=0.3)
    return figure


def _plot_latency_by_batch(document: dict, colours: dict):
    records = _measured(document)
    if not records:
        figure = _figure(6.5, 2.5)
        _empty(figure, "Latency per batch size", "no latency measured")
        return figure
    batches = sorted({r["batch_size"] for r in records})
    series = list(dict.fromkeys(_series(r) for r in records))
    figure = _figure(8.5, 4.5)
    ax = figure.subplots()
    # batch sizes as evenly spaced categories (1, 64, 256 would crowd a linear axis); each series
    # is nudged sideways a little so that whiskers at the same batch size do not hide each other
    width = 0.5 / max(len(series), 1)
    for i, name in enumerate(series):
        mine = sorted((r for r in records if _series(r) == name), key=lambda r: r["batch_size"])
        xs = [batches.index(r["batch_size"]) + (i - (len(series) - 1) / 2) * width for r in mine]
        lat = [r["latency_ms"] for r in mine]
        p50 = [t["p50"] for t in lat]
        p90 = [max(t.get("p90") or t["p50"], t["p50"]) - t["p50"] for t in lat]
        ax.errorbar(xs, p50, yerr=[[0] * len(p50), p90], marker="o", markersize=5, capsize=3, color=colours[name], label=_text(name))
        p99 = [(x, t["p99"]) for x, t in zip(xs, lat) if t.get("p99") is not None]
        ax.scatter([p[0] for p in p99], [p[1] for p in p99], marker="x", s=22, color=colours[name], zorder=3)
    _log_if_wide(ax, [v for r in records for v in (r["latency_ms"]["p50"], r["latency_ms"].get("p99") or 0)], "y")
    ax.set_xticks(range(len(batches)), [str(b) for b in batches])
    ax.set_xlim(-0.6, len(batches) - 0.4)
    ax.set_xlabel("batch size")
    ax.set_ylabel("latency per batch (ms)")
    ax.set_title("Latency per batch size: p50, whisker up to p90, \u00d7 = p99", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7)
    return figure


def _figures(document: dict) -> dict:
    colours = _colours(document)
    return {
        "latency_vs_accuracy": _plot_latency_vs_accuracy(document, colours),
        "size": _plot_size(document),
        "latency_by_batch": _plot_latency_by_batch(document, colours),
    }


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def write_plots(document: dict, folder: Path) -> list[Path]:
    """Write latency_vs_accuracy.png, size.png and latency_by_batch.png into `folder`, always all
    three (a plot without data says so), and return their paths in that order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, figure in _figures(document).items():
        path = folder / f"{name}.png"
        path.write_bytes(_png(figure))
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


def _bytes(value) -> str:
    if value is None:
        return DASH
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.2f} GiB"


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
    label = _label(record)
    artifact = _e(label) if label == record["artifact"] else f'{_e(label)}<br><small>{_e(record["artifact"])}</small>'
    mean = DASH if lat.get("mean") is None else f"{_ms(lat['mean'])} \u00b1 {_ms(lat.get('std') or 0, _digits(lat['mean']))}"
    cells = [_ms(lat.get("p50")), _ms(lat.get("p90")), _ms(lat.get("p99")), mean, _throughput(record.get("throughput")),
             _percent(record.get("accuracy")), _percent(record.get("agreement")), _speedup(record), _bytes(record.get("size_bytes")),
             _count(record.get("params")), _count(record.get("flops")), _bytes(record.get("peak_memory_bytes"))]
    skipped = record.get("skipped")
    return (f'<tr{" class=skipped" if skipped else ""}><td class=text>{artifact}</td>'
            f'<td class=text>{_e(record.get("backend") or DASH)}</td><td class=text>{_e(record.get("device") or DASH)}</td>'
            f'<td>{_e(record.get("batch_size", DASH))}</td>' + "".join(f"<td>{_e(c)}</td>" for c in cells)
            + f'<td class=text>{_e(skipped or "")}</td></tr>')


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
tr.skipped td { color: #999; font-style: italic; } tr.skipped td:last-child { white-space: normal; min-width: 20em; }
.note { background: #fff6e0; border-left: 4px solid #e0a800; padding: 0.4em 0.8em; }
"""

CAPTIONS = {
    "latency_vs_accuracy": "Latency vs accuracy per batch size; the dashed step line is the Pareto front (nothing is both faster and more accurate than a circled point).",
    "size": "Size on disk per artifact.",
    "latency_by_batch": "Latency per batch size for each artifact and backend: p50, whisker up to p90, \u00d7 marks p99.",
}


def render_html(document: dict) -> str:
    """The whole report as one self-contained HTML page (plots inline as base64 PNG)."""
    records = document.get("records", [])
    settings = document.get("settings") or {}
    notes = []
    if not _has_accuracy(document):
        notes.append(NO_ACCURACY)
    skipped = sum(1 for r in records if r.get("skipped"))
    if skipped:
        notes.append(f"{skipped} of {len(records)} records were skipped; the last column of the table says why.")
    plots = "".join(
        f'<figure><img alt="{_e(name.replace("_", " "))}" src="data:image/png;base64,{base64.b64encode(_png(figure)).decode("ascii")}">'
        f"<figcaption>{_e(CAPTIONS[name])}</figcaption></figure>"
        for name, figure in _figures(document).items()
    )
    machine = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in _machine_rows(document))
    units = {"min_time": " s"}
    setting = "".join(f"<dt>{_e(k.replace('_', ' '))}</dt><dd>{_e(_setting(v))}{units.get(k, '') if v is not None else ''}</dd>"
                      for k, v in settings.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>aiopt bench report {_e(document.get("created_at") or "")}</title><style>{CSS}</style></head><body>
<h1>aiopt bench report</h1>
<p>Command: <code>{_e(document.get("command") or DASH)}</code></p>
{"".join(f'<p class="note">{_e(n)}</p>' for n in notes)}
<h2>Machine</h2><dl>{machine}</dl>
<h2>Settings</h2><dl>{setting}</dl>
<h2>Plots</h2>{plots}
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
