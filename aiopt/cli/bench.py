"""`aiopt bench`: latency percentiles, throughput, accuracy, size and memory of artifacts side by
side, written as JSON, Markdown and HTML reports; generative models go to aiopt.cli.llm."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.markup import escape

from aiopt.artifacts import command_line
from aiopt.bench import html
from aiopt.bench import report as reports
from aiopt.bench.generative import GenerativeBenchConfig, is_generative
from aiopt.bench.measure import BenchConfig, run_bench
from aiopt.bench.report import ReportConfig, short_reason, speedup_text
from aiopt.cli.app import command
from aiopt.cli.llm import bench_generative
from aiopt.cli.options import FORCE_OPTION, INPUT_DTYPE_OPTION, INPUT_SHAPE_OPTION, config_from, config_options, input_spec
from aiopt.cli.render import progress, say, stderr, stdout, table
from aiopt.errors import CheckFailedError
from aiopt.fileio import check_output_path, human_size, write_bytes_atomic
from aiopt.measure.latency import LatencyConfig


@command(epilog="Example: aiopt bench cnn.pt cnn.int8.onnx --batch-size 1 --batch-size 64 --json r.json --markdown r.md --html r.html")
@config_options(BenchConfig, LatencyConfig, GenerativeBenchConfig, ReportConfig)
def bench(
    artifacts: List[str] = typer.Argument(..., help="Artifacts to measure side by side (any format aiopt loads)."),
    input_shape: Optional[List[str]] = INPUT_SHAPE_OPTION,
    input_dtype: Optional[List[str]] = INPUT_DTYPE_OPTION,
    force: bool = FORCE_OPTION,
    **options: Any,
) -> None:
    """Measure latency percentiles, throughput, accuracy, size and memory of artifacts, side by side."""
    report = config_from(ReportConfig, options)
    if all(is_generative(a) for a in artifacts):  # causal LMs: TTFT, tokens/s and the bandwidth limit (aiopt.bench.generative)
        bench_generative(list(artifacts), config_from(GenerativeBenchConfig, options), report, force, tuple(options["backends"] or ()))
        return
    outputs = {name: check_output_path(path, *artifacts, force=force) for name, path in report.files().items()}
    baseline = report.baseline_report
    previous = reports.load_report(baseline) if baseline else None
    config = config_from(BenchConfig, options, latency=config_from(LatencyConfig, options),
                         input_spec=tuple(input_spec(input_shape, input_dtype) or ()), fit_batch_sizes=not options["batch_sizes"])

    def on_record(record: dict) -> None:
        label = record.get("label") or record["artifact"]
        where = f"{label} [{record['backend']}/{record['device']}]"  # escaped whole: [torch/cpu] is not markup
        if record["skipped"]:
            stderr.print(escape(f"{where} skipped: {record['skipped']}"))
        else:
            stderr.print(escape(f"{where} batch {record['batch_size']}: p50 {record['latency_ms']['p50']:.3f} ms"
                                + (f" (unsteady: {record['unsteady']})" if record.get("unsteady") else "")))

    with progress("bench") as bar:
        task = bar.add_task("", total=None, status="")

        def step(phase: str, done: int, total: int, what: str) -> None:
            bar.update(task, description=phase, total=total, completed=done, status=escape(what))

        document = run_bench(list(artifacts), config, command=command_line(), on_record=on_record, on_progress=step, say=say)
    violations = reports.compare(document, previous, report.max_regression, report.max_accuracy_drop) if previous else None
    text = reports.markdown(document, violations)
    if "json" in outputs:
        write_bytes_atomic(outputs["json"], reports.to_json(document).encode())
    if "markdown" in outputs:
        write_bytes_atomic(outputs["markdown"], text.encode())
    if "html" in outputs:
        write_bytes_atomic(outputs["html"], html.render_html(document).encode())
    if report.plots:
        folder = Path(report.plots)
        folder.mkdir(parents=True, exist_ok=True)
        html.write_plots(document, folder)
    reports.append_github_summary(text)
    _bench_table(document)
    if violations:
        raise CheckFailedError(f"{len(violations)} regression(s) against {baseline}: " + "; ".join(v.describe() for v in violations))


def _bench_table(document: dict) -> None:
    columns = ("artifact", "backend", "device", "batch", "p50 ms", "p99 ms", "samples/s", "accuracy", "agreement", "speedup", "size")
    rows = table(f"aiopt bench on {escape(document['machine']['cpu'])} ({document['settings']['threads']} threads)", columns, right=columns[3:])
    for r in document["records"]:
        name = (r.get("label") or r["artifact"]) + (" *" if r.get("is_baseline") else "")
        if r["skipped"]:  # the whole reason is in --json and the reports
            rows.add_row(escape(name), r["backend"], r["device"], str(r["batch_size"]), "skipped", escape(short_reason(r["skipped"])), "", "", "", "", "")
            continue
        rows.add_row(escape(name), r["backend"], r["device"], str(r["batch_size"]),
                      f"{r['latency_ms']['p50']:.3f}" + (" ⚠" if r.get("unsteady") else ""), f"{r['latency_ms']['p99']:.3f}",
                      f"{r['throughput']:,.0f}", "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}",
                      "-" if r["agreement"] is None else f"{r['agreement']:.4f}", escape(speedup_text(r)), human_size(r["size_bytes"]))
    stdout.print(rows)
    if document.get("unsteady"):
        stdout.print(f"⚠ {escape(document['unsteady'])}")
