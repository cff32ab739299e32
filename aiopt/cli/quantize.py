"""`aiopt quantize`: the step's config from its flags, then the chosen recipe's comparison with
FP32, or (auto) every candidate measured here. A causal-LM folder goes to aiopt.cli.llm."""
from __future__ import annotations

from typing import Any, List, Optional

import typer
from rich.markup import escape

from aiopt.bench.report import short_reason
from aiopt.cli.app import command
from aiopt.cli.llm import quantize_causal_lm_command
from aiopt.cli.options import (FORCE_OPTION, INPUT_DTYPE_OPTION, INPUT_SHAPE_OPTION, JSON_OPTION, TRUST_PICKLE_OPTION, config_of, config_options,
                               input_spec)
from aiopt.cli.render import emit_json, say, stdout, table
from aiopt.fileio import human_size
from aiopt.llm.causal_lm import is_causal_lm_folder
from aiopt.llm.quantize import LMQuantizeConfig, kv_export_metadata
from aiopt.steps import StepHooks, get_step, run_step


@command(epilog="Example: aiopt quantize cnn.pt   (every candidate measured here; the fastest that keeps quality is written)")
@config_options(get_step("quantize").config_class, LMQuantizeConfig)  # a causal LM's floor and timing: LMQuantizeConfig's own fields
def quantize(
    model: str = typer.Argument(..., help="Model to quantize: aiopt .pt, TorchScript, .pt2, ONNX, or a causal-LM Hugging Face folder."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="ONNX file to write (default: MODEL.int8.onnx, or MODEL.fp32.onnx when FP32 is fastest)."),
    force: bool = FORCE_OPTION,
    as_json: bool = JSON_OPTION,
    trust_pickle: bool = TRUST_PICKLE_OPTION,
    input_shape: Optional[List[str]] = INPUT_SHAPE_OPTION,
    input_dtype: Optional[List[str]] = INPUT_DTYPE_OPTION,
    **options: Any,
) -> None:
    """Quantize a model to INT8 (or FP16) ONNX and report accuracy, size and speed against FP32."""
    if is_causal_lm_folder(model) or kv_export_metadata(model):  # a causal LM: weight-only recipes of each runtime, picked by measurement (aiopt.llm.quantize)
        quantize_causal_lm_command(model, output, options, force, as_json)
        return
    config = config_of("quantize", options, fit_batch_sizes=not options["batch_sizes"])  # without -b a slow model's largest batch may shrink
    hooks = StepHooks(say=say, force=force, trust_pickle=trust_pickle, input_spec=input_spec(input_shape, input_dtype))
    result = run_step("quantize", model, output, config, hooks=hooks).result
    if as_json:
        emit_json(result.to_dict())
    elif result.method == "auto":
        _selection_table(model, result)
    else:
        _forced_table(model, result)


def _forced_table(model: str, result) -> None:
    """A forced recipe against FP32: accuracy, size, latency, and every output's verdict."""
    latency = result.latency
    rows = table(f"quantized {escape(model)} -> {escape(result.path)} ({result.method})",
                 ("", "FP32", (result.stored_precision or ("fp16" if result.method == "fp16" else "int8")).upper()))
    if result.accuracy is not None:
        rows.add_row(f"accuracy ({result.eval_data})", f"{result.fp32_accuracy:.4f}", f"{result.accuracy:.4f}")
    rows.add_row("size", human_size(result.fp32_size_bytes), human_size(result.size_bytes))
    rows.add_row(f"latency p50, batch {latency['batch_size']}", f"{latency['fp32_p50_ms']:.3f} ms", f"{latency['p50_ms']:.3f} ms")
    stdout.print(rows)
    agreement = result.agreement_with_parent
    first = next(iter((agreement.get("outputs") or {}).values()), {"kind": "class"})
    top1 = f", top-1 agreement with FP32 {agreement.get('top1_agreement', 1):.4f}" if first["kind"] == "class" else ""  # top-1 of a [B, 1] output says nothing
    stdout.print(f"speedup {latency['speedup']:.2f}x (quick check; aiopt bench for figures){top1}"
                 + (f", accuracy drop {result.accuracy_drop * 100:.2f} pt" if result.accuracy_drop is not None else ""))
    if result.kept_float:
        stdout.print(f"kept in float: {', '.join(result.kept_float)}")
    judged = agreement.get("outputs") or {}
    if len(judged) > 1 or any(o["kind"] != "class" for o in judged.values()):  # the forced recipe, judged on every output
        stdout.print("every output: " + "; ".join(f"{escape(name)} ({o['kind']}): {escape(o['verdict'])}" for name, o in judged.items()))


def _selection_table(model: str, result) -> None:
    """Every candidate quantize weighed: quality, size, p50 per batch; the chosen one marked."""
    selection = result.selection
    batches = selection["batch_sizes"]
    metric = result.metric
    quality_key = {"accuracy": "accuracy", "agreement": "top1_agreement", "cosine": "mean_cosine"}.get(metric)
    # one output judged by one metric: its figure; several outputs or other kinds: each output's figure
    every_output = any("quality_summary" in c for c in selection["candidates"]) and (quality_key is None or len(selection["floor"].get("outputs", [])) > 1)
    rows = table(f"quantize {escape(model)}: candidates measured here ({escape(selection['floor']['rule'])})",
                 ("candidate", "runtime", "holds", "quality" if every_output else metric, "size", *[f"p50 b{b}" for b in batches],
                  *[f"vs FP32 b{b}" for b in batches], "verdict"))
    for c in selection["candidates"]:
        quality = (c["quality"] or {}).get(quality_key) if not every_output else c.get("quality_summary")
        cell = "-" if quality is None else (quality if isinstance(quality, str) else f"{quality:.4f}")
        mark = "chosen" if c["name"] == selection["chosen"] else short_reason(c["problem"] or "")  # the whole reason: --json
        rows.add_row(escape(c["name"]), c["runtime"], c["precision"], escape(cell), human_size(c["size_bytes"]) if c["size_bytes"] else "-",
                     *[f"{c['latency_ms'][str(b)]:.3f} ms" + (" ⚠" if str(b) in (c.get("unsteady") or {}) else "") if str(b) in c["latency_ms"] else "-"
                       for b in batches],
                     *[f"{c['speedup_vs_fp32'][str(b)]:.2f}x" if c["speedup_vs_fp32"].get(str(b)) else "-" for b in batches],
                     escape(mark))
    stdout.print(rows)
    for note in selection.get("notes") or []:
        stdout.print(f"note: {escape(note)}")
    held = f" [{result.stored_precision.upper()} graph, runs as {result.compute_precision}]" if result.stored_precision else ""
    stdout.print(f"wrote {escape(result.path)}{escape(held)}: {escape(result.reason)}")
