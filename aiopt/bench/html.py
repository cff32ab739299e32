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
import re
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


def _measured(records: list[dict]) -> list[dict]:
    return [r for r in records if not r.get("skipped") and (r.get("latency_ms") or {}).get("p50") is not None]


def _has_accuracy(document: dict) -> bool:
    return any(r.get("accuracy") is not None for r in _measured(document.get("records", [])))


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


def _groups(document: dict) -> list[tuple[str, list[dict]]]:
    """The records of each model (lineage root), in the order they come: a plot never mixes
    models that solve different problems. A model is named by its baseline's label."""
    from aiopt.bench.report import NO_BASELINE

    groups: dict = {}
    names: dict = {}
    for record in document.get("records", []):
        root = record.get("baseline")
        groups.setdefault(root, []).append(record)
        if record.get("is_baseline"):
            names.setdefault(root, _label(record))
    return [(names.get(root) or root or NO_BASELINE, records) for root, records in groups.items()]


def _colours(records: list[dict]) -> dict[str, object]:
    """The same colour for a series in every plot of a model, in the order the records list them."""
    from matplotlib import colormaps

    names = list(dict.fromkeys(_series(r) for r in records))
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


LABEL_POINTS = 8  # font size of the point numbers
CLEARANCE = 6  # points kept free around each marker (the Pareto circle's radius is about 5)
STEPS = (6, 10, 15, 22, 30, 40)  # distances tried, in points, from a marker to its number's box
DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))


def _overlap(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _spot(mark: tuple, size: tuple, marks: list[tuple], taken: list[tuple], frame: tuple, scale: float) -> tuple:
    """Where a label box of `size` (pixels) beside `mark` covers no other label, no marker and
    stays in `frame`: the nearest of eight directions at growing distance, else the farthest tried."""
    (px, py), (w, h), keep = mark, size, CLEARANCE * scale
    for distance in STEPS:
        for dx, dy in DIRECTIONS:
            cx, cy = px + dx * (distance * scale + w / 2), py + dy * (distance * scale + h / 2)
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
            inside = frame[0] <= box[0] and box[2] <= frame[2] and frame[1] <= box[1] and box[3] <= frame[3]
            if inside and not any(_overlap(box, t) for t in taken) and not any(_overlap(box, (x - keep, y - keep, x + keep, y + keep)) for x, y in marks):
                return box, distance
    return box, distance


def _number_points(ax, points: list[tuple[float, float, str]]) -> None:
    """Write each point's number beside it without covering another number or marker; a thin
    leader line joins a number pushed further away. Call once the figure's layout is final."""
    scale = ax.figure.dpi / 72  # points -> pixels
    marks = [tuple(ax.transData.transform((x, y))) for x, y, _ in points]
    frame = tuple(ax.get_window_extent().extents)
    taken: list[tuple] = []
    for (x, y, text), mark in zip(points, marks):
        size = ((0.62 * LABEL_POINTS * len(text) + 3) * scale, (LABEL_POINTS + 3) * scale)
        box, distance = _spot(mark, size, marks, taken, frame, scale)
        taken.append(box)
        offset = (((box[0] + box[2]) / 2 - mark[0]) / scale, ((box[1] + box[3]) / 2 - mark[1]) / scale)
        note = ax.annotate(text, (x, y), xytext=offset, textcoords="offset points", ha="center", va="center", fontsize=LABEL_POINTS,
                           fontweight="bold", arrowprops=dict(arrowstyle="-", color="0.55", lw=0.6, shrinkA=0, shrinkB=4) if distance > STEPS[0] else None)
        note.set_in_layout(False)  # placed in pixels of the final layout: it must not move the axes


def _plot_latency_vs_accuracy(model: str, records: list[dict], colours: dict):
    from matplotlib.lines import Line2D
    from matplotlib.ticker import PercentFormatter

    points = [r for r in _measured(records) if r.get("accuracy") is not None]
    batches = sorted({r["batch_size"] for r in points})
    if not batches:
        figure = _figure(6.5, 3.0)
        _empty(figure, f"{_text(model)}: latency vs accuracy", NO_ACCURACY)
        return figure
    # numbered markers and a key below: names beside the points would cover each other
    numbers = {name: index + 1 for index, name in enumerate(dict.fromkeys(_series(r) for r in points))}
    # one subplot per batch size: latencies at different batch sizes are not comparable
    cols = min(len(batches), 2)
    rows = math.ceil(len(batches) / cols)
    figure = _figure(6.0 * cols, 4.0 * rows + 0.6 + 0.2 * math.ceil(len(numbers) / cols))
    axes = figure.subplots(rows, cols, squeeze=False).ravel()
    placed = []
    for ax, batch in zip(axes, batches):
        here = [(r["latency_ms"]["p50"], r["accuracy"], r) for r in points if r["batch_size"] == batch]
        front = pareto_front(here)
        for x, y, record in here:
            ax.scatter(x, y, s=36, color=colours[_series(record)], zorder=3)
        xs = [p[0] for p in front] + [max(p[0] for p in here)]  # the front holds until the slowest point
        ys = [p[1] for p in front] + [front[-1][1]]
        ax.step(xs, ys, where="post", color="0.2", linewidth=1, linestyle="--", zorder=2)
        ax.scatter([p[0] for p in front], [p[1] for p in front], s=110, facecolors="none", edgecolors="black", linewidths=1.5, zorder=4)
        _log_if_wide(ax, [p[0] for p in here], "x")
        ax.margins(x=0.2, y=0.2)
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1))
        ax.set_xlabel("p50 latency (ms)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"batch {batch}", fontsize=9)
        ax.grid(True, alpha=0.3)
        placed.append((ax, [(x, y, str(numbers[_series(r)])) for x, y, r in here]))
    for ax in axes[len(batches):]:
        ax.set_axis_off()
    figure.suptitle(f"{_text(model)}: latency vs accuracy (up and left is better; dashed, circled: the Pareto front)", fontsize=10)
    handles = [Line2D([], [], marker="o", linestyle="", color=colours[name]) for name in numbers]
    figure.legend(handles, [f"{number}  {_text(name)}" for name, number in numbers.items()], loc="outside lower center",
                  ncols=cols, fontsize=8, frameon=False)
    figure.canvas.draw()  # the layout is final now: numbers are placed in its pixels
    for ax, labelled in placed:
        _number_points(ax, labelled)
    return figure


def _unit(largest: float) -> tuple[str, float]:
    return ("MiB", 1024.0**2) if largest >= 1024**2 else ("KiB", 1024.0)


def _plot_size(model: str, records: list[dict]):
    sizes: dict[str, int] = {}  # one bar per artifact: the size does not depend on backend or batch
    for record in records:
        if record.get("size_bytes") is not None:
            sizes.setdefault(_label(record), record["size_bytes"])
    if not sizes:
        figure = _figure(6.5, 2.5)
        _empty(figure, f"{_text(model)}: size on disk", "no size data")
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
    ax.set_title(f"{_text(model)}: size on disk", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    return figure


def _plot_latency_by_batch(model: str, records: list[dict], colours: dict):
    records = _measured(records)
    if not records:
        figure = _figure(6.5, 2.5)
        _empty(figure, f"{_text(model)}: latency per batch size", "no latency measured")
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
    ax.set_title(f"{_text(model)}: latency per batch size (p50, whisker up to p90, \u00d7 = p99)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7)
    return figure


def _figures(document: dict) -> list[tuple[str, dict]]:
    """(model, {plot name: figure}) per model, plots in PLOTS order."""
    found = []
    for model, records in _groups(document):
        colours = _colours(records)
        found.append((model, {
            "latency_vs_accuracy": _plot_latency_vs_accuracy(model, records, colours),
            "size": _plot_size(model, records),
            "latency_by_batch": _plot_latency_by_batch(model, records, colours),
        }))
    return found


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


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
    figures = _figures(document)
    paths = []
    for slug, (_, plots) in zip(_slugs([model for model, _ in figures]), figures):
        for name, figure in plots.items():
            path = folder / f"{slug}.{name}.png"
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
    label = _label(record)
    artifact = _e(label) if label == record["artifact"] else f'{_e(label)}<br><small>{_e(record["artifact"])}</small>'
    mean = DASH if lat.get("mean") is None else f"{_ms(lat['mean'])} \u00b1 {_ms(lat.get('std') or 0, _digits(lat['mean']))}"
    cells = [_ms(lat.get("p50")), _ms(lat.get("p90")), _ms(lat.get("p99")), mean, _throughput(record.get("throughput")),
             _percent(record.get("accuracy")), _percent(record.get("agreement")), _speedup(record), _bytes(record.get("size_bytes")),
             _count(record.get("params")), _count(record.get("flops")), _bytes(record.get("peak_memory_bytes"))]
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
    from aiopt.bench.report import BUDGET_TEXT, best_per_model

    bests = best_per_model(document)
    if not bests:
        return "<p>Nothing was measured.</p>"
    rows = []
    for b in bests:
        base = b.baseline or {}
        change = "" if b.accuracy_change is None else f" ({b.accuracy_change * 100:+.1f} pt)"
        cells = [
            (_e(b.model), "text"), (_e(b.device), "text"), (_e(b.batch_size), ""),
            (_e(_label(b.best)) + (" <small>(the baseline)</small>" if b.best is b.baseline else ""), "text"), (_e(b.best["backend"]), "text"),
            (f"{_ms(base.get('latency_ms', {}).get('p50'))} &rarr; {_ms(b.best['latency_ms']['p50'])}" if base else _ms(b.best["latency_ms"]["p50"]), ""),
            ((f"<b>{b.speedup:.2f}\u00d7</b>" if b.speedup is not None else DASH) + (" \u26a0 unsteady" if b.unsteady else ""), ""),
            (f"{_percent(base.get('accuracy'))} &rarr; {_percent(b.best.get('accuracy'))}{change}" if base else _percent(b.best.get("accuracy")), ""),
            (f"{_bytes(base.get('size_bytes'))} &rarr; {_bytes(b.best.get('size_bytes'))}" if base else _bytes(b.best.get("size_bytes")), ""),
        ]
        rows.append("<tr>" + "".join(f"<td class={kind}>{cell}</td>" if kind else f"<td>{cell}</td>" for cell, kind in cells) + "</tr>")
    header = ("model", "device", "batch", "best artifact", "backend", "p50 ms", "speedup", "accuracy", "size")
    return (f"<p>Best: the fastest artifact whose accuracy is within {_e(BUDGET_TEXT)} of the baseline's (FP32 PyTorch, its lineage's root); "
            f"speedup: same-run ratio of p50 latencies; before &rarr; after.</p>"
            f'<div class="scroll"><table class="summary"><thead><tr>{"".join(f"<th>{_e(c)}</th>" for c in header)}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _plots(document: dict) -> str:
    sections = []
    for model, figures in _figures(document):
        images = "".join(
            f'<figure><img alt="{_e(model)}: {_e(name.replace("_", " "))}" src="data:image/png;base64,{base64.b64encode(_png(figure)).decode("ascii")}">'
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
    if not _has_accuracy(document):
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
