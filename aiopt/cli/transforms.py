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
                               input_spec, step_option)
from aiopt.cli.render import emit_json, epoch_bar, json_or_line, progress, say, stdout, table
from aiopt.errors import InputError
from aiopt.export.torch_cuda import default_output as torch_cuda_output
from aiopt.llm.causal_lm import is_causal_lm_folder
from aiopt.llm.quantize import kv_export_metadata
from aiopt.steps import StepHooks, StepResult, run_step

EXPORT_SUFFIX = {"onnx": ".onnx", "tensorrt": ".engine", "torch-tensorrt": ".trt.pt2"}


@command(epilog="Example: aiopt export cnn.pt --format onnx -o cnn.onnx   |   aiopt export cnn.pt --format tensorrt --precision fp16 -o cnn.engine")
def export(
    model: str = typer.Argument(..., help="PyTorch artifact (aiopt .pt, TorchScript, .pt2); for tensorrt also an ONNX model."),
    format: str = typer.Option("onnx", "--format", "-f", help="onnx, tensorrt (engine + sidecar), torch-tensorrt (ExportedProgram with TensorRT engines) or torch-cuda (.pt2 run as CUDA graphs)."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="File to write (default: MODEL with the format's suffix)."),
    opset: int = step_option("export", "opset"),
    dynamic_batch: bool = step_option("export", "dynamic_batch"),
    atol: float = step_option("export", "atol"),
    rtol: float = step_option("export", "rtol"),
    simplify: bool = step_option("export", "simplify"),
    precision: str = step_option("export-tensorrt", "precision"),  # TensorRT's and torch-cuda's precision: one flag
    batch_sizes: Optional[List[int]] = step_option("export-torch-cuda", "batch_sizes"),
    device: Optional[str] = step_option("export-torch-cuda", "device"),
    sparse: bool = step_option("export-tensorrt", "sparse"),
    min_batch: int = step_option("export-tensorrt", "min_batch"),
    opt_batch: int = step_option("export-tensorrt", "opt_batch"),
    max_batch: int = step_option("export-tensorrt", "max_batch"),
    workspace_mb: int = step_option("export-tensorrt", "workspace_mb"),
    timing_cache: Optional[str] = step_option("export-tensorrt", "timing_cache"),
    seq_len: int = step_option("export", "seq_len"),
    exporter: str = typer.Option("torch", "--exporter", help="onnx, causal-LM folders: torch (torch.onnx dynamo, KV cache as inputs/outputs) or genai (ONNX Runtime GenAI's model builder)."),
    input_shape: Optional[List[str]] = INPUT_SHAPE_OPTION,
    input_dtype: Optional[List[str]] = INPUT_DTYPE_OPTION,
    trust_pickle: bool = TRUST_PICKLE_OPTION,
    force: bool = FORCE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Export a PyTorch model to ONNX (validated against PyTorch at two batch sizes) or to a TensorRT engine."""
    options = locals()
    spec = input_spec(input_shape, input_dtype)
    if format not in ("onnx", "tensorrt", "torch-tensorrt", "torch-cuda"):
        raise InputError(f"--format {format!r} is not available; choose onnx, tensorrt, torch-tensorrt or torch-cuda")
    if format == "onnx" and (is_causal_lm_folder(model) or kv_export_metadata(model)):  # a causal LM exports with its KV cache, to a folder
        export_causal_lm(model, output or str(Path(model.rstrip("/")).with_suffix(".onnx")), exporter, opset, force, as_json)
        return
    step = "export" if format == "onnx" else f"export-{format}"
    config = config_of(step, options)
    output = output or str(torch_cuda_output(model, precision) if format == "torch-cuda" else Path(model).with_suffix(EXPORT_SUFFIX[format]))
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
def deploy(
    artifact: str = typer.Argument(..., help="An ONNX model or a TensorRT engine (with its sidecar)."),
    triton: str = typer.Option(..., "--triton", help="Triton model repository folder to write into."),
    name: Optional[str] = step_option("deploy", "name"),
    max_batch: int = step_option("deploy", "max_batch"),
    instances: int = step_option("deploy", "instances"),
    runtime: Optional[str] = step_option("deploy", "runtime"),
    force: bool = FORCE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Write a Triton Inference Server model repository entry: config.pbtxt and the model file."""
    result = run_step("deploy", artifact, triton, config_of("deploy", locals()), hooks=StepHooks(say=say, force=force)).result
    notes = "".join(f"\nnote: {escape(note)}" for note in result.notes)
    json_or_line(result.to_dict(), as_json, f"wrote {escape(result.config)} and {escape(result.path)} ({result.platform}, max_batch_size {result.max_batch_size}){notes}")


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
def prune(
    model: str = typer.Argument(..., help="An aiopt checkpoint of a reference architecture (cnn, lstm, transformer)."),
    method: str = step_option("prune", "method"),
    sparsity: float = step_option("prune", "sparsity"),
    finetune_epochs: int = step_option("prune", "finetune_epochs"),
    scope: str = step_option("prune", "scope"),
    steps: int = step_option("prune", "steps"),
    target_params: Optional[float] = step_option("prune", "target_params"),
    lr: Optional[float] = step_option("prune", "lr"),
    dataset: Optional[str] = step_option("prune", "dataset"),
    seed: int = step_option("prune", "seed"),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Checkpoint to write (default: MODEL.pruned.pt)."),
    force: bool = FORCE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Prune a model (structured channels/heads, unstructured, or 2:4), fine-tune it, and report what it cost."""
    def render(result) -> Table:
        rows = table(f"pruned {escape(model)} -> {escape(result.path)} ({result.method})", ("metric", "before", "after"))
        rows.add_row("params", f"{result.params_before:,}", f"{result.params_after:,}")
        rows.add_row("MACs per sample", f"{result.macs_before:,}", f"{result.macs_after:,}")
        rows.add_row("accuracy", f"{result.accuracy_before:.4f}", f"{result.accuracy_after_prune:.4f} pruned"
                     + (f", {result.accuracy_after_finetune:.4f} fine-tuned" if result.accuracy_after_finetune is not None else ""))
        return rows

    _train_step("prune", model, output, ".pruned.pt", config_of("prune", locals()), force, as_json,
                lambda bars: epoch_bar(bars, "fine-tuning"), render)


@command(epilog="Example: aiopt distill cnn.pt --width 0.45 -o cnn.kd.pt   |   aiopt distill cnn.pt --student cnn:tiny -o cnn.kd.pt")
def distill(
    teacher: str = typer.Argument(..., help="The teacher: an aiopt checkpoint of a reference architecture."),
    student: Optional[str] = step_option("distill", "student"),
    width: Optional[float] = step_option("distill", "width"),
    temperature: Optional[float] = step_option("distill", "temperature"),
    alpha: Optional[float] = step_option("distill", "alpha"),
    feature_weight: Optional[float] = step_option("distill", "feature_weight"),
    epochs: Optional[int] = step_option("distill", "epochs"),
    lr: Optional[float] = step_option("distill", "lr"),
    dataset: Optional[str] = step_option("distill", "dataset"),
    compare_alone: bool = step_option("distill", "compare_alone"),
    seed: int = step_option("distill", "seed"),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Student checkpoint to write (default: TEACHER.kd.pt)."),
    force: bool = FORCE_OPTION,
    as_json: bool = JSON_OPTION,
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
    _train_step("distill", teacher, output, ".kd.pt", config_of("distill", locals()), force, as_json, watch, render)
