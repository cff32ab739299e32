"""Commands that turn one artifact into another through a step (aiopt.steps): export, prune,
distill, deploy. Each fills the step's config from its flags, runs the step and renders its
typed result. (quantize, the largest, has a module of its own.)"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from aiopt.cli.app import command
from aiopt.cli.llm import export_causal_lm
from aiopt.cli.options import (FORCE_OPTION, INPUT_DTYPE_OPTION, INPUT_SHAPE_OPTION, JSON_OPTION, TRUST_PICKLE_OPTION, config_of,
                               input_spec, step_options)
from aiopt.cli.render import emit_json, epoch_bar, json_or_line, progress, say, stdout, table
from aiopt.errors import InputError
from aiopt.export.torch_cuda import default_output as torch_cuda_output
from aiopt.llm.causal_lm import is_causal_lm_folder
from aiopt.llm.quantize import kv_export_metadata
from aiopt.steps import StepHooks, StepResult, run_step

EXPORT_SUFFIX = {"onnx": ".onnx", "tensorrt": ".engine", "torch-tensorrt": ".trt.pt2"}


@command(epilog="Example: aiopt export cnn.pt --format onnx -o cnn.onnx   |   aiopt export cnn.pt --format tensorrt --precision fp16 -o cnn.engine")
@step_options("export", "export-tensorrt", "export-torch-cuda")  # --precision: TensorRT's and torch-cuda's, one flag
def export(
    model: str = typer.Argument(..., help="PyTorch artifact (aiopt .pt, TorchScript, .pt2); for tensorrt also an ONNX model."),
    format: str = typer.Option("onnx", "--format", "-f", help="onnx, tensorrt (engine + sidecar), torch-tensorrt (ExportedProgram with TensorRT engines) or torch-cuda (.pt2 run as CUDA graphs)."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="File to write (default: MODEL with the format's suffix)."),
    exporter: str = typer.Option("torch", "--exporter", help="onnx, causal-LM folders: torch (torch.onnx dynamo, KV cache as inputs/outputs) or genai (ONNX Runtime GenAI's model builder)."),
    trust_pickle: bool = TRUST_PICKLE_OPTION,
    input_shape: Optional[List[str]] = INPUT_SHAPE_OPTION,
    input_dtype: Optional[List[str]] = INPUT_DTYPE_OPTION,
    force: bool = FORCE_OPTION,
    as_json: bool = JSON_OPTION,
    **options: Any,
) -> None:
    """Export a PyTorch model to ONNX (validated against PyTorch at two batch sizes) or to a TensorRT engine."""
    spec = input_spec(input_shape, input_dtype)
    if format not in ("onnx", "tensorrt", "torch-tensorrt", "torch-cuda"):
        raise InputError(f"--format {format!r} is not available; choose onnx, tensorrt, torch-tensorrt or torch-cuda")
    if format == "onnx" and (is_causal_lm_folder(model) or kv_export_metadata(model)):  # a causal LM exports with its KV cache, to a folder
        export_causal_lm(model, output or str(Path(model.rstrip("/")).with_suffix(".onnx")), exporter, options["opset"], force, as_json)
        return
    step = "export" if format == "onnx" else f"export-{format}"
    config = config_of(step, options)
    output = output or str(torch_cuda_output(model, options["precision"]) if format == "torch-cuda" else Path(model).with_suffix(EXPORT_SUFFIX[format]))
    hooks = StepHooks(say=say, force=force, trust_pickle=trust_pickle, input_spec=spec)
    result = run_step(step, model, output, config, hooks=hooks).result
    if format in ("tensorrt", "torch-tensorrt"):
        json_or_line(result.to_dict(), as_json, f"built {escape(result.path)} ({result.precision}, TensorRT {result.tensorrt_version}, "
                                                 f"{escape(result.gpu['name'])}); sidecar {escape(result.sidecar)}")
    elif format == "torch-cuda":
        accuracy = f", test accuracy {result.parent_accuracy:.4f} -> {result.accuracy:.4f}" if result.accuracy is not None else ""
        json_or_line(result.to_dict(), as_json, f"exported {escape(result.path)} ({result.precision}, buckets "
                                                 f"{', '.join(map(str, result.batch_sizes))}, validated on {result.exported_on}{accuracy})")
    elif as_json:
        emit_json(result.to_dict())
    else:
        _onnx_export_table(result)


def _onnx_export_table(result) -> None:
    rows = table(f"exported {escape(result.path)}", ("stage", "batch sizes", "max abs diff", "max rel diff", "top-1 agreement"))
    for check in result.validation:
        shapes = [f"{b} (seq {n})" for b, n in zip(check["batch_sizes"], check["seq_lens"])] if "seq_lens" in check else check["batch_sizes"]
        rows.add_row(check["stage"], ", ".join(map(str, shapes)), f"{check['max_abs_diff']:.2e}",
                     f"{check['max_rel_diff']:.2e}", f"{check['top1_agreement']:.4f}")
    stdout.print(rows)
    stdout.print(f"exporter {result.exporter}, nodes {result.nodes_exported} -> {result.nodes_simplified}"
                 + (f", test accuracy on ONNX Runtime {result.accuracy:.4f}" if result.accuracy is not None else ""))


@command(epilog="Example: aiopt deploy cnn.int8.onnx --triton model_repository/ --max-batch 64 --instances 2")
@step_options("deploy")
def deploy(
    artifact: str = typer.Argument(..., help="An ONNX model or a TensorRT engine (with its sidecar)."),
    triton: str = typer.Option(..., "--triton", help="Triton model repository folder to write into."),
    force: bool = FORCE_OPTION,
    as_json: bool = JSON_OPTION,
    **options: Any,
) -> None:
    """Write a Triton Inference Server model repository entry: config.pbtxt and the model file."""
    result = run_step("deploy", artifact, triton, config_of("deploy", options), hooks=StepHooks(say=say, force=force)).result
    notes = "".join(f"\nnote: {escape(note)}" for note in result.notes)
    json_or_line(result.to_dict(), as_json, f"wrote {escape(result.config)} and {escape(result.file)} ({result.platform}, max_batch_size {result.max_batch_size}){notes}")


def _train_step(step: str, source: str, output: str | None, suffix: str, config: Any, force: bool, as_json: bool,
                watch: Callable[[Any], Callable], render: Callable[[StepResult], Table]) -> None:
    """prune and distill: run the step with a progress bar per training phase, then its --json or table."""
    output = output or str(Path(source).with_suffix(suffix))
    with progress(step) as bars:
        result = run_step(step, source, output, config, hooks=StepHooks(say=say, on_epoch=watch(bars), force=force)).result
    if as_json:
        emit_json(result.to_dict())
    else:
        stdout.print(render(result))


@command(epilog="Example: aiopt prune cnn.pt --method channel --sparsity 0.5 --finetune-epochs 10 -o cnn.p50.pt")
@step_options("prune")
def prune(
    model: str = typer.Argument(..., help="An aiopt checkpoint of a reference architecture (cnn, lstm, transformer)."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Checkpoint to write (default: MODEL.pruned.pt)."),
    force: bool = FORCE_OPTION,
    as_json: bool = JSON_OPTION,
    **options: Any,
) -> None:
    """Prune a model (structured channels/heads, unstructured, or 2:4), fine-tune it, and report what it cost."""
    def render(result) -> Table:
        rows = table(f"pruned {escape(model)} -> {escape(result.path)} ({result.method})", ("metric", "before", "after"))
        rows.add_row("params", f"{result.params_before:,}", f"{result.params_after:,}")
        rows.add_row("MACs per sample", f"{result.macs_before:,}", f"{result.macs_after:,}")
        rows.add_row("accuracy", f"{result.accuracy_before:.4f}", f"{result.accuracy_after_prune:.4f} pruned"
                     + (f", {result.accuracy_after_finetune:.4f} fine-tuned" if result.accuracy_after_finetune is not None else ""))
        return rows

    _train_step("prune", model, output, ".pruned.pt", config_of("prune", options), force, as_json,
                lambda bars: epoch_bar(bars, "fine-tuning"), render)


@command(epilog="Example: aiopt distill cnn.pt --width 0.45 -o cnn.kd.pt   |   aiopt distill cnn.pt --student cnn:tiny -o cnn.kd.pt")
@step_options("distill")
def distill(
    teacher: str = typer.Argument(..., help="The teacher: an aiopt checkpoint of a reference architecture."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Student checkpoint to write (default: TEACHER.kd.pt)."),
    force: bool = FORCE_OPTION,
    as_json: bool = JSON_OPTION,
    **options: Any,
) -> None:
    """Train a smaller student from a teacher (soft targets + labels) and compare it with the student trained alone."""
    def watch(bars) -> Callable:
        started: dict[str, Callable] = {}  # "alone" starts only once the distilled student is done

        def on_epoch(phase: str, stats) -> None:
            if phase not in started:
                started[phase] = epoch_bar(bars, {"distill": "student with the teacher", "alone": "student alone"}.get(phase, phase))
            started[phase](stats)
        return on_epoch

    def render(result) -> Table:
        rows = table(f"distilled {escape(teacher)} -> {escape(result.path)}", ("model", "params", "test accuracy"))
        rows.add_row("teacher", f"{result.teacher_params:,}", f"{result.teacher_accuracy:.4f}")
        rows.add_row("student (distilled)", f"{result.student_params:,}", f"{result.student_accuracy:.4f}")
        if result.student_alone_accuracy is not None:
            rows.add_row("student alone, same budget", f"{result.student_params:,}", f"{result.student_alone_accuracy:.4f}")
        return rows

    # None (not given) leaves a loss setting to the student architecture's measured default.
    _train_step("distill", teacher, output, ".kd.pt", config_of("distill", options), force, as_json, watch, render)
