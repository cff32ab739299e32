"""Commands on a model as it is: train a reference model, inspect, run and compare artifacts."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, List, Optional

import typer
from rich.markup import escape

from aiopt.cli.app import command
from aiopt.cli.llm import causal_lm_rows
from aiopt.cli.options import (FORCE_OPTION, INPUT_DTYPE_OPTION, INPUT_SHAPE_OPTION, JSON_OPTION, TRUST_PICKLE_OPTION, config_from, config_options,
                               input_spec)
from aiopt.cli.render import emit_json, epoch_bar, json_or_line, notes, progress, spec_text, stdout, table
from aiopt.compare import CompareConfig, compare_artifacts
from aiopt.inspect import InspectConfig, inspect_artifact
from aiopt.bench.generative import is_generative
from aiopt.reference_models import get_entry
from aiopt.measure.run_outputs import RunConfig, run_npz
from aiopt.reference_models.train import TrainOptions, train_reference_model


@command(epilog="Example: aiopt train cnn --dataset mnist1d --epochs 30 --seed 0 -o cnn.pt")
@config_options(TrainOptions)
def train(
    model: str = typer.Argument(..., help="Reference model: cnn, lstm, transformer, or gpt (a language model, written as a folder); add :tiny or :base (default) for the size."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Checkpoint to write (default: MODEL.pt; gpt: a folder named gpt)."),
    force: bool = FORCE_OPTION,
    as_json: bool = JSON_OPTION,
    **options: Any,
) -> None:
    """Train a reference model (CPU or CUDA), evaluate it on the test split and write a checkpoint."""
    settings = config_from(TrainOptions, options)
    name = model.split(":")[0]
    output = output or (name if get_entry(model).kind == "causal-lm" else f"{name}.pt")  # a causal LM is a folder
    with progress("train") as bars:
        on_epoch = epoch_bar(bars, escape(model))
        result = train_reference_model(model, output, **asdict(settings), force=force, on_epoch=on_epoch)
    summary = {
        "path": result.path, "architecture": result.architecture, "size": result.size, "dataset": result.dataset,
        "accuracy": result.accuracy, "params": result.params, "train_seconds": result.train_seconds,
        "epochs": result.metadata["training"]["epochs"], "seed": settings.seed,
        **({"perplexity": result.metadata["metrics"]["perplexity"], "bigram_perplexity": result.metadata["metrics"]["bigram"]["perplexity"]}
           if "bigram" in result.metadata.get("metrics", {}) else {}),
    }
    if as_json:
        emit_json(summary)
        return
    rows = table(f"trained {result.architecture}:{result.size} on {result.dataset}", ("field", "value"))
    for key in ("path", "params", "epochs", "train_seconds", "accuracy", "perplexity", "bigram_perplexity"):
        if key in summary:
            rows.add_row(key, f"{summary[key]:.4f}" if key in ("accuracy", "perplexity", "bigram_perplexity") else escape(str(summary[key])))
    stdout.print(rows)


@command(epilog="Example: aiopt inspect cnn.pt --json")
@config_options(InspectConfig)
def inspect(
    artifact: str = typer.Argument(..., help="Any artifact: aiopt .pt, TorchScript, torch.export .pt2 or ONNX."),
    input_shape: Optional[List[str]] = INPUT_SHAPE_OPTION,
    input_dtype: Optional[List[str]] = INPUT_DTYPE_OPTION,
    trust_pickle: bool = TRUST_PICKLE_OPTION,
    as_json: bool = JSON_OPTION,
    **options: Any,
) -> None:
    """Show an artifact's format, parameters, size, input/output spec, metadata and lineage."""
    info = inspect_artifact(artifact, trust_pickle=trust_pickle, input_spec=input_spec(input_shape, input_dtype),
                           kv_tokens=config_from(InspectConfig, options).kv_tokens)
    if as_json:
        emit_json(info)
        return
    rows = table(escape(info["path"]), ("field", "value"))
    for key in ("format", "architecture", "dataset", "params", "size_bytes", "accuracy", "sha256", "integrity"):
        value = info[key]
        rows.add_row(key, "-" if value is None else f"{value:.4f}" if key == "accuracy" else escape(str(value)))
    rows.add_row("inputs", "\n".join(spec_text(s) for s in info["inputs"]) or "unknown (pass --input-shape)")
    rows.add_row("outputs", "\n".join(spec_text(s) for s in info["outputs"]) or "unknown")
    for index, step in enumerate(info["lineage"]):
        accuracy = step.get("accuracy")
        rows.add_row("lineage" if index == 0 else "", escape(f"{step.get('step')}: {step.get('artifact')}" + (f" (acc {accuracy:.4f})" if accuracy is not None else "")))
    if info["metadata"].get("command"):
        rows.add_row("command", escape(info["metadata"]["command"]))
    if info.get("causal_lm"):
        causal_lm_rows(rows, info["causal_lm"])
    stdout.print(rows)


@command(epilog="Example: aiopt run cnn.onnx --input x.npz -o y.npz")
@config_options(RunConfig)
def run(
    artifact: str = typer.Argument(..., help="Any artifact aiopt can load."),
    input: str = typer.Option(..., "--input", "-i", help="Inputs: an .npz with one array per input name (x for one input), a .txt (one text per line), or mnist1d/digits."),
    output: str = typer.Option(..., "--output", "-o", help="Outputs to write, as .npz (one array per output name)."),
    input_shape: Optional[List[str]] = INPUT_SHAPE_OPTION,
    input_dtype: Optional[List[str]] = INPUT_DTYPE_OPTION,
    trust_pickle: bool = TRUST_PICKLE_OPTION,
    force: bool = FORCE_OPTION,
    as_json: bool = JSON_OPTION,
    **options: Any,
) -> None:
    """Run an artifact over the inputs in an .npz file and write its outputs (a causal LM: the logits at every position)."""
    settings = config_from(RunConfig, options)
    if is_generative(artifact):  # on the runtime its metadata names, or --backend
        from aiopt.llm.run_lm import run_causal_lm  # torch

        result = run_causal_lm(artifact, input, output, runtime=settings.backend, force=force)
        json_or_line(result, as_json, f"{result['samples']} sequences through {escape(artifact)} on {result['backend']}/cpu -> {escape(result['path'])}")
        return
    result = run_npz(artifact, input, output, device=settings.device, backend=settings.backend, force=force, trust_pickle=trust_pickle,
                     input_spec=input_spec(input_shape, input_dtype), seq_len=settings.seq_len)
    notes(result["notes"])
    json_or_line(result, as_json, f"{result['samples']} samples through {escape(artifact)} on {result['backend']}/{result['device']} -> {escape(result['path'])}")


@command(epilog="Example: aiopt compare cnn.pt cnn.onnx --data mnist1d")
@config_options(CompareConfig)
def compare(
    reference: str = typer.Argument(..., help="The artifact taken as the truth."),
    candidate: str = typer.Argument(..., help="The artifact checked against it."),
    input_shape: Optional[List[str]] = INPUT_SHAPE_OPTION,
    input_dtype: Optional[List[str]] = INPUT_DTYPE_OPTION,
    trust_pickle: bool = TRUST_PICKLE_OPTION,
    as_json: bool = JSON_OPTION,
    **options: Any,
) -> None:
    """Run two artifacts on the same inputs: max abs/rel difference, top-1 agreement, accuracy."""
    settings = config_from(CompareConfig, options)
    result = compare_artifacts(reference, candidate, data=settings.data, input_spec=input_spec(input_shape, input_dtype), trust_pickle=trust_pickle,
                               device=settings.device, seq_len=settings.seq_len, fixed_inputs=settings.fixed_inputs)
    notes(result["notes"])
    if as_json:
        emit_json(result)
        return
    rows = table(f"{escape(candidate)} vs {escape(reference)} on {escape(result['inputs'])}",
                 ("output", "judged as", "max abs diff", "max rel diff", "top-1 agreement", "mean cosine", "flips / rel err"))
    for name, stats in result["outputs"].items():
        top1, judged = stats.get("top1_agreement"), stats.get("judged") or {}
        other = (f"{judged['flip_rate']:.2%} at {judged['threshold']:g}" if "flip_rate" in judged
                 else f"{judged['relative_error']:.4f}" if "relative_error" in judged else "-")
        cosine = judged.get("cosine", stats["mean_cosine"])  # a map: the whole tensor's cosine
        rows.add_row(escape(name), judged.get("kind", "-"), f"{stats['max_abs_diff']:.2e}", f"{stats['max_rel_diff']:.2e}",
                     "-" if top1 is None else f"{top1:.4f}", f"{cosine:.6f}", other)
    stdout.print(rows)
    stdout.print(f"quality judged by {result['metric']['name']} ({escape(result['metric']['why'])})")
    if "accuracy" in result["reference"]:
        stdout.print(f"accuracy: reference {result['reference']['accuracy']:.4f}, candidate {result['candidate']['accuracy']:.4f}")
