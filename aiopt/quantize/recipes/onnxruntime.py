"""ONNX Runtime's recipes: thin wrappers over its quantization tools (pre-processing, static QDQ
INT8, dynamic INT8; the FP16/BF16 conversion is export/float16.py, which TensorRT builds share),
and the builders the registry names for them. Policy (what to quantize, for which target) lives
in the callers (forced.py, measured.py); this module only knows how to ask ONNX Runtime for it.
"""
from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiopt.errors import UnsupportedModelError
from aiopt.export.float16 import convert_float16, quiet_tools
from aiopt.export.onnx import control_flow_nodes, simplify
from aiopt.quantize.calibration import OrtCalibrationReader
from aiopt.quantize.candidates import RECURRENT_OPS, BuildContext, Candidate, Unavailable

# Ops that carry the model's multiply-accumulates: what is worth quantizing.
COMPUTE_OPS = ("Conv", "MatMul", "Gemm")
DYNAMIC_OPS = ("MatMul", "Gemm", "LSTM", "GRU", "Attention")

CALIB_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class StaticInt8Options:
    per_channel: bool = True
    reduce_range: bool = False
    activation_type: str = "uint8"
    weight_type: str = "int8"
    symmetric_activations: bool = False
    calib_method: str = "minmax"
    op_types: tuple[str, ...] = COMPUTE_OPS
    exclude: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)
    calibration_providers: tuple[str, ...] = ()  # empty: ONNX Runtime's default (CPU)


def preprocess(source: Path, target: Path) -> str:
    """ORT's quantization pre-processing (symbolic shape inference + graph optimisation).

    Symbolic shape inference cannot follow some exported Reshape chains (Shape -> Gather ->
    Concat -> Reshape with the batch dim). Rather than quantize without shapes, we constant-fold
    those chains with onnxslim and try again; then let the inference merge symbolic dims.
    Returns the path taken, for the metadata.
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    attempts = (("direct", False, {}), ("onnxslim-folded", True, {}), ("onnxslim-folded+auto-merge", True, {"auto_merge": True, "guess_output_rank": True}),
                # control flow left on dynamic shapes ("if batch == 1"): symbolic inference cannot follow it, onnx's own can
                ("onnxslim-folded+onnx-shape-inference", True, {"skip_symbolic_shape": True}))
    errors = []
    for name, fold, options in attempts:
        model_path = source
        if fold:
            model_path = target.with_suffix(".folded.onnx")
            onnx.save_model(simplify(onnx.load(str(source))), str(model_path))
        try:
            # ORT's symbolic shape inference drops debug files (sym_shape_infer_temp.onnx and its
            # external data) into the working folder when it gives up: keep them in ours.
            with quiet_tools(), contextlib.chdir(target.parent):
                quant_pre_process(str(Path(model_path).resolve()), str(target.resolve()), **options)
            return name
        except Exception as exc:  # noqa: BLE001 -- symbolic shape inference raises plain Exceptions
            errors.append(f"{name}: {str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}")
    flow = control_flow_nodes(onnx.load(str(source), load_external_data=False))
    if flow:
        raise UnsupportedModelError(f"ONNX Runtime's quantization pre-processing cannot follow the control flow in this graph ({', '.join(flow[:3])}); "
                                    "if it branches on an input that is fixed in use (a sample rate), pass it, e.g. --input sr=16000, "
                                    "and the graph is specialised before quantizing")
    raise UnsupportedModelError(f"ONNX Runtime's quantization pre-processing fails on this graph ({'; '.join(errors)})")


def graph_nodes(path: Path) -> list[tuple[str, str]]:
    """(name, op_type) of every node, in graph order."""
    import onnx

    return [(n.name, n.op_type) for n in onnx.load(str(path), load_external_data=False).graph.node]


def _qtype(name: str):
    from onnxruntime.quantization import QuantType

    return {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[name]


def _calib_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[name]


def quantize_static_qdq(source: Path, target: Path, reader, options: StaticInt8Options, cache: Path) -> None:
    """Static INT8 in QDQ format. Ranges are calibrated once and cached in `cache`, so layer
    selection can re-quantize with other exclusions without re-running calibration."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    extra = {"ActivationSymmetric": options.symmetric_activations, "WeightSymmetric": True, **options.extra}
    if options.calib_method == "percentile":
        extra.setdefault("CalibPercentile", 99.999)
    try:
        with quiet_tools():
            quantize_static(
                str(source), str(target), reader if not cache.is_file() else None,
                quant_format=QuantFormat.QDQ, op_types_to_quantize=list(options.op_types),
                per_channel=options.per_channel, reduce_range=options.reduce_range,
                activation_type=_qtype(options.activation_type), weight_type=_qtype(options.weight_type),
                nodes_to_exclude=list(options.exclude), calibrate_method=_calib_method(options.calib_method),
                extra_options=extra, calibration_cache_path=str(cache),
                # passed only when asked for: older onnxruntime releases lack the argument
                **({"calibration_providers": list(options.calibration_providers)} if options.calibration_providers else {}),
            )
    except Exception as exc:
        raise UnsupportedModelError(f"ONNX Runtime's static quantization failed: {str(exc).splitlines()[0][:300]}") from exc


def quantize_dynamic_int8(source: Path, target: Path, per_channel: bool, reduce_range: bool,
                          op_types: tuple[str, ...] = DYNAMIC_OPS, exclude: tuple[str, ...] = ()) -> None:
    """Dynamic INT8: weights quantized ahead of time, activations per batch at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        with quiet_tools():
            quantize_dynamic(str(source), str(target), op_types_to_quantize=list(op_types), per_channel=per_channel,
                             reduce_range=reduce_range, weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude))
    except Exception as exc:
        raise UnsupportedModelError(f"ONNX Runtime's dynamic quantization failed: {str(exc).splitlines()[0][:300]}") from exc


# ---------------------------------------------------------------- the registry's builders

def static_int8(prepared: Path, target: Path, calibration, spec, options: StaticInt8Options, recurrent: list[str],
                cache: Path, recurrent_dynamic: bool = True) -> None:
    """Static QDQ INT8. Recurrent cells get no speed from QDQ on ONNX Runtime: the rest is
    quantized statically, then LSTM nodes dynamically (DynamicQuantizeLSTM runs in INT8)."""
    reader = OrtCalibrationReader(calibration, spec)
    if not recurrent or not recurrent_dynamic:
        quantize_static_qdq(prepared, target, reader, options, cache)
        return
    partial = target.with_suffix(".static.onnx")
    quantize_static_qdq(prepared, partial, reader, options, cache)
    dynamic = tuple(n for n in recurrent if n not in options.exclude)
    if dynamic:
        quantize_dynamic_int8(partial, target, options.per_channel, options.reduce_range,
                                         op_types=RECURRENT_OPS, exclude=tuple(n for n in recurrent if n in options.exclude))
    else:
        shutil.copyfile(partial, target)


def fp32(ctx: BuildContext) -> Candidate:
    return Candidate("fp32", "fp32", "onnxruntime", ctx.prepared, {"graph": "ONNX Runtime pre-processed FP32"})


def static(per_channel: bool, reduce_range: bool | None) -> Callable[[BuildContext], Candidate]:
    def build(ctx: BuildContext) -> Candidate:
        if ctx.calibration is None:
            raise Unavailable("no calibration data (pass --calibration)")
        rr = ctx.kernel.reduce_range if reduce_range is None else reduce_range
        name = f"int8-static-{'per-channel' if per_channel else 'per-tensor'}" + ("" if reduce_range is None else "-full-range")
        options = StaticInt8Options(per_channel=per_channel, reduce_range=rr, activation_type=ctx.kernel.activation_type,
                                    weight_type=ctx.kernel.weight_type, calib_method=ctx.calib_method, exclude=ctx.exclude,
                                    calibration_providers=ctx.calibration_providers)
        target = ctx.target(name)
        static_int8(ctx.prepared, target, ctx.calibration, ctx.spec, options, ctx.recurrent, ctx.work / "calibration-cache.json")
        return Candidate(name, "int8", "onnxruntime", target, {"method": "static", "format": "QDQ", "per_channel": per_channel,
                                                                "reduce_range": rr, "calibration": ctx.calibration.source,
                                                                "recurrent_nodes_dynamic": ctx.recurrent})
    return build


def dynamic(per_channel: bool) -> Callable[[BuildContext], Candidate]:
    # Per-tensor is not only the coarser choice: ORT's DynamicQuantizeLSTM runs per-tensor weights
    # about 2x faster at batch 64 than per-channel ones (benchmarks/peers.py, LSTM).
    def build(ctx: BuildContext) -> Candidate:
        name = "int8-dynamic" if per_channel else "int8-dynamic-per-tensor"
        target = ctx.target(name)
        quantize_dynamic_int8(ctx.prepared, target, per_channel, ctx.kernel.reduce_range, exclude=ctx.exclude)
        return Candidate(name, "int8", "onnxruntime", target, {"method": "dynamic", "per_channel": per_channel, "reduce_range": ctx.kernel.reduce_range})
    return build


def tensorrt_static(per_channel: bool) -> Callable[[BuildContext], Candidate]:
    """TensorRT's explicit quantization: symmetric INT8 QDQ around every op, recurrent cells included."""
    def build(ctx: BuildContext) -> Candidate:
        if ctx.calibration is None:
            raise Unavailable("no calibration data (pass --calibration)")
        name = "int8-static-tensorrt" + ("" if per_channel else "-per-tensor")
        options = StaticInt8Options(per_channel=per_channel, activation_type="int8", weight_type="int8", symmetric_activations=True,
                                    calib_method=ctx.calib_method, exclude=ctx.exclude, extra={"QuantizeBias": False},
                                    calibration_providers=ctx.calibration_providers)
        target = ctx.target(name)
        static_int8(ctx.prepared, target, ctx.calibration, ctx.spec, options, ctx.recurrent, ctx.work / "calibration-cache.json",
                    recurrent_dynamic=False)
        return Candidate(name, "int8", "tensorrt", target, {"method": "static", "format": "QDQ", "symmetric": True, "per_channel": per_channel,
                                                           "calibration": ctx.calibration.source})
    return build


def fp16(ctx: BuildContext) -> Candidate:
    """FP16 weights and compute, float32 at the edges, numerically sensitive ops kept in FP32."""
    target = ctx.target("fp16")
    kept = convert_float16(ctx.prepared, target, ctx.exclude)
    return Candidate("fp16", "fp16", "onnxruntime", target, {"method": "fp16", "kept_float32": kept})
