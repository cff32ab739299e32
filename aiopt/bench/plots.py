"""The `aiopt bench` plots, drawn from the bench JSON document (schema 1): per model (lineage root)
latency against accuracy with the Pareto front, size on disk, and latency by batch size.

matplotlib is imported inside the functions that draw (`import aiopt` must stay light), and only
through `Figure` + `FigureCanvasAgg`: no pyplot, so no GUI backend and no global figure state.
"""
from __future__ import annotations

import io
import math

from aiopt.bench.report import NO_BASELINE

DPI = 110
PLOTS = ("latency_vs_accuracy", "size", "latency_by_batch")
NO_ACCURACY = "no accuracy data: pass --data"
DASH = "\u2014"


# --- reading the document -------------------------------------------------------------------

def record_label(record: dict) -> str:
    return record.get("label") or record["artifact"]


def _series(record: dict) -> str:
    """One plotted series per (artifact, backend, device); the device only when it is not the CPU."""
    where = record.get("backend") or "?"
    if record.get("device") not in (None, "cpu"):
        where += f", {record['device']}"
    return f"{record_label(record)} [{where}]"


def _measured(records: list[dict]) -> list[dict]:
    return [r for r in records if not r.get("skipped") and (r.get("latency_ms") or {}).get("p50") is not None]


def has_accuracy(document: dict) -> bool:
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


def size_text(value) -> str:
    """Bytes in B, KiB, MiB or GiB, as the size plot's bars and the page's tables show them."""
    if value is None:
        return DASH
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.2f} GiB"


# --- plots ----------------------------------------------------------------------------------

def _text(value: str) -> str:
    return value.replace("$", r"\$")  # a `$` in a file name would otherwise start mathtext


def _groups(document: dict) -> list[tuple[str, list[dict]]]:
    """The records of each model (lineage root), in the order they come: a plot never mixes
    models that solve different problems. A model is named by its baseline's label."""
    groups: dict = {}
    names: dict = {}
    for record in document.get("records", []):
        root = record.get("baseline")
        groups.setdefault(root, []).append(record)
        if record.get("is_baseline"):
            names.setdefault(root, record_label(record))
    return [(names.get(root) or root or NO_BASELINE, records) for root, records in groups.items()]


def _colours(records: list[dict]) -> dict[str, object]:
    """The same colour for a series in every plot of a model, in the order the records list them."""
    from matplotlib import colormaps

    names = list(dict.fromkeys(_series(r) for r in records))
    cmap = colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def new_figure(width: float, height: float):
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
        figure = new_figure(6.5, 3.0)
        _empty(figure, f"{_text(model)}: latency vs accuracy", NO_ACCURACY)
        return figure
    # numbered markers and a key below: names beside the points would cover each other
    numbers = {name: index + 1 for index, name in enumerate(dict.fromkeys(_series(r) for r in points))}
    # one subplot per batch size: latencies at different batch sizes are not comparable
    cols = min(len(batches), 2)
    rows = math.ceil(len(batches) / cols)
    figure = new_figure(6.0 * cols, 4.0 * rows + 0.6 + 0.2 * math.ceil(len(numbers) / cols))
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
            sizes.setdefault(record_label(record), record["size_bytes"])
    if not sizes:
        figure = new_figure(6.5, 2.5)
        _empty(figure, f"{_text(model)}: size on disk", "no size data")
        return figure
    unit, scale = _unit(max(sizes.values()))
    figure = new_figure(7.0, 1.2 + 0.4 * len(sizes))
    ax = figure.subplots()
    names, values = list(sizes), [v / scale for v in sizes.values()]
    bars = ax.barh(range(len(names)), values, color="#4c72b0")
    ax.bar_label(bars, labels=[size_text(v) for v in sizes.values()], padding=3, fontsize=8)  # each in its own unit
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
        figure = new_figure(6.5, 2.5)
        _empty(figure, f"{_text(model)}: latency per batch size", "no latency measured")
        return figure
    batches = sorted({r["batch_size"] for r in records})
    series = list(dict.fromkeys(_series(r) for r in records))
    figure = new_figure(8.5, 4.5)
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


def model_figures(document: dict) -> list[tuple[str, dict]]:
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


def png_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
