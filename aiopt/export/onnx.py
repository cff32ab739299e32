"""PyTorch -> ONNX, validated against PyTorch before anything is written.

Exporter choice: the torch.export-based exporter (`torch.onnx.export(..., dynamo=True)`) for
modules and torch.export programs. It is PyTorch's maintained default, reads the same graph
`torch.export` sees, and with an explicit `Dim("batch")` and an example batch of 2 keeps the
batch dynamic (with an example batch of 1 it specialises the batch dim: the LSTM and the
Transformer hit that). TorchScript modules cannot be re-exported that way, so they go through
the TorchScript exporter (`dynamo=False`), the only one that accepts a ScriptModule.

Other symbolic dims (a sequence length, "seq") become torch.export Dims too, traced at
`seq_len` and validated at two other lengths. Hugging Face folders (BERT-style encoders) export
with the torch.export-based exporter as they are: checked on torch 2.13 with transformers 5.24
(SDPA attention), so no TorchScript fallback is needed; their examples are token batches with
real padding, so the check covers the attention mask.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from aiopt.artifacts import FORMAT_ONNX, FORMAT_TORCHSCRIPT, LoadedModel, ONNX_DTYPES, child_metadata, example_inputs, load_model, output_spec, require_input_spec, save_onnx_artifact
from aiopt.artifacts.hf import sample_inputs
from aiopt.data import DATASETS
from aiopt.errors import CheckFailedError, InputError, UnsupportedModelError
from aiopt.evaluate import accuracy, agreement, eval_data, run_batches
from aiopt.measure.quality import check_against_parent
from aiopt.options import option
from aiopt.fileio import atomic_path, check_output_path, is_write_error
from aiopt.runtime import runner_for
from aiopt.runtime.onnxruntime_backend import make_session
from aiopt.specs import TensorSpec
from aiopt.text_data import check_seq_len

DEFAULT_OPSET = 18
VALIDATION_BATCH_SIZES = (1, 7)  # two sizes, neither the export example's, to prove the batch is dynamic


@dataclass(frozen=True)
class OnnxExportConfig:
    opset: int = option(DEFAULT_OPSET, "--opset", "ONNX opset version.")
    dynamic_batch: bool = option(True, "--dynamic-batch/--static-batch", "Keep the batch dimension dynamic.")
    atol: float = option(1e-4, "--atol", "Absolute tolerance of ONNX Runtime vs PyTorch outputs.")
    rtol: float = option(1e-3, "--rtol", "Relative tolerance of ONNX Runtime vs PyTorch outputs.")
    simplify: bool = option(True, "--simplify/--no-simplify", "Simplify the graph with onnxslim, then validate again.")
    seq_len: int = option(128, "--seq-len", "onnx: length the sequence axis (seq) is traced at; validated at two other lengths.")


@dataclass
class OnnxExportResult:
    path: str
    exporter: str
    opset: int
    validation: list[dict]
    simplified: bool
    nodes_before: int
    nodes_after: int
    accuracy: float | None
    metadata: dict = field(default_factory=dict)


def export_onnx(
    source: str | os.PathLike,
    output: str | os.PathLike,
    config: OnnxExportConfig = OnnxExportConfig(),
    force: bool = False,
    trust_pickle: bool = False,
    input_spec: list[TensorSpec] | None = None,
) -> OnnxExportResult:
    """Export `source` to ONNX at `output`; nothing is written unless validation passes."""
    out = check_output_path(output, source, force=force)
    loaded = load_model(source, trust_pickle=trust_pickle, input_spec=input_spec)
    if loaded.format == FORMAT_ONNX:
        raise InputError(f"{source} is already an ONNX model; pass a PyTorch artifact to export")
    spec = require_input_spec(loaded)
    if _has_seq_dims(spec):  # a length of 1 would be traced as a constant; beyond the position table, nothing runs
        check_seq_len(config.seq_len, (loaded.metadata.get("hf") or {}).get("max_length"))
    outputs = output_spec(loaded)  # may run the model once (TorchScript): compute it once
    output_names = [o.name for o in outputs]
    exported_spec = _exported_spec(spec, config.dynamic_batch)
    with atomic_path(out) as tmp:
        exporter = _torch_to_onnx(loaded, spec, output_names, tmp, config)
        model = check_onnx(tmp)
        validation = [validate_against_torch(loaded, tmp, spec, config, stage="export")]
        nodes_before = nodes_after = len(model.graph.node)
        if config.simplify:
            model = simplify(model)
            nodes_after = len(model.graph.node)
            _save(model, tmp)
            check_onnx(tmp)
            validation.append(validate_against_torch(loaded, tmp, spec, config, stage="simplified"))
        accuracy, parent_agreement = _measure_on_test_split(tmp, exported_spec, loaded, spec, outputs)
        if parent_agreement is None:  # no dataset: the random-input validation is all there is
            parent_agreement = {"max_abs_diff": max(v["max_abs_diff"] for v in validation),
                                "top1_agreement": min(v["top1_agreement"] for v in validation), "inputs": "random"}
        metadata = child_metadata(
            loaded, "export",
            format=FORMAT_ONNX,
            inputs=[s.to_dict() for s in exported_spec],
            outputs=[o.to_dict() for o in outputs],
            export={"exporter": exporter, "opset": config.opset, "dynamic_batch": config.dynamic_batch, "simplified": config.simplify,
                    "validation": validation, **({"traced_seq_len": config.seq_len} if _has_seq_dims(spec) else {})},
            metrics=({"accuracy": accuracy, "split": "test", "measured_on": "onnxruntime"} if accuracy is not None else loaded.metadata.get("metrics")),
            agreement_with_parent=parent_agreement,
        )
        save_onnx_artifact(model, metadata, out, write_to=tmp)
    return OnnxExportResult(str(out), exporter, config.opset, validation, config.simplify, nodes_before, nodes_after, accuracy, metadata)


def _exported_spec(spec: list[TensorSpec], dynamic_batch: bool) -> list[TensorSpec]:
    """A static-batch export is traced at batch 1, and its spec says so."""
    if dynamic_batch:
        return spec
    return [TensorSpec(s.name, tuple(1 if d == "batch" else d for d in s.shape), s.dtype) for s in spec]


def _dynamic_shapes(spec: list[TensorSpec], dynamic_batch: bool):
    import torch

    dims: dict[str, object] = {}
    shapes = []
    for tensor in spec:
        axes = {}
        for axis, dim in enumerate(tensor.shape):
            if isinstance(dim, str) and (dim != "batch" or dynamic_batch):
                dims.setdefault(dim, torch.export.Dim(re.sub(r"\W", "_", dim), min=1))
                axes[axis] = dims[dim]
        shapes.append(axes or None)
    return tuple(shapes)


def _torch_to_onnx(loaded: LoadedModel, spec: list[TensorSpec], output_names: list[str], path: Path, config: OnnxExportConfig) -> str:
    import torch

    example = _example(loaded, spec, 2 if config.dynamic_batch else 1, config.seq_len)
    names = [s.name for s in spec]
    quiet = contextlib.redirect_stdout(io.StringIO())  # the exporter prints progress lines; ours go to stderr
    # It also logs a warning per optional torchvision op it skips: noise for a user.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), quiet:
            warnings.simplefilter("ignore")
            if loaded.format == FORMAT_TORCHSCRIPT:
                axes = {s.name: {i: d for i, d in enumerate(s.shape) if isinstance(d, str) and (d != "batch" or config.dynamic_batch)} for s in spec}
                axes.update({n: {0: "batch"} for n in output_names} if config.dynamic_batch else {})
                torch.onnx.export(loaded.model, example, str(path), input_names=names, output_names=output_names,
                                  opset_version=config.opset, dynamo=False, dynamic_axes=axes)
                return "torchscript"
            torch.onnx.export(loaded.model, example, str(path), input_names=names, output_names=output_names,
                              opset_version=config.opset, dynamo=True, dynamic_shapes=_dynamic_shapes(spec, config.dynamic_batch),
                              external_data=False, verbose=False)
            return "dynamo"
    except Exception as exc:
        if is_write_error(exc):  # a full disk is the user's to fix, not an unsupported model
            raise
        raise UnsupportedModelError(f"ONNX export failed: {describe_export_error(exc, loaded.model, example)}") from exc


_OP_PATTERNS = (
    re.compile(r"OpOverload\(op='([\w.]+)'"),
    re.compile(r"target=torch\.ops\.([\w.]+?)(?:\.default)?\]?\("),
    re.compile(r"\b(aten::[\w.]+)"),
)


def describe_export_error(exc: Exception, module, example: tuple) -> str:
    """Name the op the exporter could not handle and, where the graph says, the module that calls it."""
    text = f"{exc}\n{exc.__cause__ or ''}"
    op = next((m.group(1) for p in _OP_PATTERNS for m in [p.search(text)] if m), None)
    if not op:
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        return f"{type(exc).__name__}: {first[:300]}"
    where = _module_calling(module, example, op.split("::")[-1].split(".")[-1])
    return f"unsupported op {op}" + (f" in module {where}" if where else "") + "; replace it with supported ops or register an ONNX translation for it"


def _module_calling(module, example: tuple, op_name: str) -> str | None:
    """The innermost module whose forward calls `op_name`, from a torch.export graph's module stack.

    The exporter decomposes ops further than torch.export does (special_i0 -> i0 ->
    prims.bessel_i0), so an exact match is tried first, then a match on the last part of
    the name, across the raw and the decomposed graph.
    """
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = torch.export.export(module, example, strict=False)
            graphs = [raw.graph, raw.run_decompositions().graph]
    except Exception:
        return None
    suffix = op_name.rsplit("_", 1)[-1]
    for matches in (lambda base: base == op_name, lambda base: base.rsplit("_", 1)[-1] == suffix):
        for graph in graphs:
            for node in graph.nodes:
                base = str(node.target).split(".")[-2] if node.op == "call_function" and "." in str(node.target) else ""
                if base and matches(base):
                    stack = list((node.meta.get("nn_module_stack") or {}).values())
                    if not stack:
                        return type(module).__name__
                    path, kind = stack[-1]
                    kind_name = getattr(kind, "__name__", str(kind).rsplit(".", 1)[-1].strip("'>"))
                    return f"{path or type(module).__name__} ({kind_name})"
    return None


def check_onnx(path: str | os.PathLike):
    """Full onnx.checker check and strict shape inference; returns the model."""
    import onnx

    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:
        raise UnsupportedModelError(f"the exported ONNX model fails onnx's checks: {str(exc).splitlines()[0][:300]}") from exc
    return model


def simplify(model):
    """Simplify with onnxslim (constant folding, dead-node removal, fusion); keep the input if it fails."""
    import onnxslim

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return onnxslim.slim(model)
    except Exception as exc:
        warnings.warn(f"onnxslim could not simplify the graph ({exc}); keeping it as exported")
        return model


CONTROL_FLOW_OPS = ("If", "Loop", "Scan")


def control_flow_nodes(model) -> list[str]:
    """`op 'name'` of every control-flow node in the main graph."""
    return [f"{n.op_type} {n.name!r}" for n in model.graph.node if n.op_type in CONTROL_FLOW_OPS]


def specialise_fixed_inputs(source: Path, target: Path, fixed: dict) -> dict | None:
    """The graph with its fixed inputs (a sample rate) turned into constants and folded with
    onnxslim, so an `If` on them collapses to the branch taken; None when no fixed input is a
    graph input. The record names what was specialised and any control flow left."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    taken = {i.name: i for i in model.graph.input}
    names = [n for n in fixed if n in taken]
    if not names:
        return None
    before = control_flow_nodes(model)
    for name in names:
        value = taken[name]
        dtype = ONNX_DTYPES.get(value.type.tensor_type.elem_type, "float32")
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in value.type.tensor_type.shape.dim]
        model.graph.input.remove(value)
        model.graph.initializer.append(numpy_helper.from_array(np.full(dims, fixed[name], dtype=dtype), name))
    folded = simplify(model)
    onnx.save_model(folded, str(target))
    return {"inputs": {n: fixed[n] for n in names}, "tool": "onnxslim constant folding", "control_flow_before": before,
            "control_flow_left": control_flow_nodes(folded)}


def validate_against_torch(loaded: LoadedModel, onnx_path: Path, spec: list[TensorSpec], config: OnnxExportConfig, stage: str) -> dict:
    """ONNX Runtime vs PyTorch on the same inputs at two batch sizes; raise above tolerance."""
    import torch

    session = make_session(str(onnx_path))
    sizes = VALIDATION_BATCH_SIZES if config.dynamic_batch else (1,)
    seq_lens = validation_seq_lens(config.seq_len)
    report: dict = {"stage": stage, "batch_sizes": list(sizes), "max_abs_diff": 0.0, "max_rel_diff": 0.0, "top1_agreement": 1.0}
    if _has_seq_dims(spec):
        report["seq_lens"] = list(seq_lens[:len(sizes)])
    torch.manual_seed(0)
    for batch_size, seq_len in zip(sizes, seq_lens):
        inputs = _example(loaded, spec, batch_size, seq_len)
        with torch.inference_mode():
            reference = loaded.model(*inputs)
        reference = reference if isinstance(reference, (tuple, list)) else (reference,)
        got = session.run(None, {s.name: t.numpy() for s, t in zip(spec, inputs)})
        for ref, out in zip(reference, got):
            ref = ref.float().numpy()
            stats = agreement(ref, out)
            if not stats["finite"]:
                raise UnsupportedModelError(f"the {stage} ONNX model produces NaN/Inf at batch {batch_size}; nothing was written")
            report["max_abs_diff"] = max(report["max_abs_diff"], stats["max_abs_diff"])
            report["max_rel_diff"] = max(report["max_rel_diff"], stats["max_rel_diff"])
            report["top1_agreement"] = min(report["top1_agreement"], stats.get("top1_agreement", 1.0))
            if not np.allclose(out, ref, atol=config.atol, rtol=config.rtol):
                raise CheckFailedError(
                    f"the {stage} ONNX model disagrees with PyTorch at batch {batch_size}: max abs diff {stats['max_abs_diff']:.3g}, "
                    f"max rel diff {stats['max_rel_diff']:.3g} (atol {config.atol}, rtol {config.rtol}); nothing was written"
                )
    return report


def validation_seq_lens(traced: int) -> tuple[int, int]:
    """Two sequence lengths, neither the traced one, to prove the sequence axis is dynamic."""
    candidates = [traced // 2, traced - 1, traced + 1, traced + 2]
    return tuple(dict.fromkeys(n for n in candidates if n >= 2 and n != traced))[:2]


def _has_seq_dims(spec: list[TensorSpec]) -> bool:
    return any(isinstance(d, str) and d != "batch" for s in spec for d in s.shape)


def _example(loaded: LoadedModel, spec: list[TensorSpec], batch_size: int, seq_len: int) -> tuple:
    """Example inputs: for a Hugging Face model, token batches with right padding of varied length."""
    if "hf" not in loaded.metadata:
        return example_inputs(spec, batch_size, seq_len)
    import torch

    feed = sample_inputs(spec, loaded.metadata, batch_size, seq_len, seed=batch_size)
    return tuple(torch.from_numpy(feed[s.name]) for s in spec)


def _measure_on_test_split(onnx_path: Path, spec: list[TensorSpec], loaded: LoadedModel, torch_spec: list[TensorSpec],
                           outputs: list[TensorSpec]) -> tuple[float | None, dict | None]:
    """Accuracy on ONNX Runtime and agreement with the PyTorch parent on the test split, when the
    model records its dataset; (None, None) otherwise. NaN outputs or collapsed agreement raise."""
    if ((loaded.metadata.get("dataset") or {}).get("name")) not in DATASETS:
        return None, None
    data = eval_data(spec, loaded.metadata)
    # both described by their specs alone: the parent's serving, dispatch, buckets or padding trim must not shape the check
    described = {"outputs": [o.to_dict() for o in outputs]}
    exported_graph = replace(loaded, path=onnx_path, format=FORMAT_ONNX, model=None, metadata=described, input_spec=spec)
    exported = run_batches(runner_for(exported_graph, backend="onnxruntime", trim_padding=False), data)[0]
    parent = run_batches(runner_for(replace(loaded, metadata=described, input_spec=torch_spec), backend="torch", trim_padding=False), data)[0]
    agreement = check_against_parent(parent, exported, "the exported ONNX model")
    return accuracy(exported, data.labels), {**agreement, "inputs": "test split"}


def _save(model, path: Path) -> None:
    import onnx

    onnx.save_model(model, str(path))
