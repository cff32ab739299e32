"""Thin wrappers over ONNX Runtime's quantization tools: pre-processing, static QDQ INT8,
dynamic INT8, and FP16/BF16 conversion. Policy (what to quantize, for which target) lives
in quantize.py; this module only knows how to ask ONNX Runtime for it.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from aiopt.artifact_checks import unseal
from aiopt.errors import UnsupportedModelError

# Ops whose INT8 form ONNX Runtime's static QDQ path does not accelerate on CPU: recurrent
# cells. Their dynamic INT8 kernels (DynamicQuantizeLSTM) do run in INT8.
RECURRENT_OPS = ("LSTM", "GRU")
# Ops that carry the model's multiply-accumulates: what is worth quantizing.
COMPUTE_OPS = ("Conv", "MatMul", "Gemm")
DYNAMIC_OPS = ("MatMul", "Gemm", "LSTM", "GRU", "Attention")
# Kept in float when converting to FP16/BF16: their reductions lose accuracy in 16 bits.
FLOAT32_SENSITIVE_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceL2", "Pow", "Sqrt", "Erf", "Exp", "Log")

CALIB_METHODS = ("minmax", "entropy", "percentile")
BF16_OPSET = 22


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


@contextlib.contextmanager
def _quiet():
    """ORT's quantizer logs and prints per-node chatter; users see our summary instead."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def preprocess(source: Path, target: Path) -> str:
    """ORT's quantization pre-processing (symbolic shape inference + graph optimisation).

    Symbolic shape inference cannot follow some exported Reshape chains (Shape -> Gather ->
    Concat -> Reshape with the batch dim). Rather than quantize without shapes, we constant-fold
    those chains with onnxslim and try again; then let the inference merge symbolic dims.
    Returns the path taken, for the metadata.
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from aiopt.export.onnx import simplify

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
            with _quiet(), contextlib.chdir(target.parent):
                quant_pre_process(str(Path(model_path).resolve()), str(target.resolve()), **options)
            return name
        except Exception as exc:  # noqa: BLE001 -- symbolic shape inference raises plain Exceptions
            errors.append(f"{name}: {str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}")
    from aiopt.export.onnx import control_flow_nodes

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
        with _quiet():
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
        with _quiet():
            quantize_dynamic(str(source), str(target), op_types_to_quantize=list(op_types), per_channel=per_channel,
                             reduce_range=reduce_range, weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude))
    except Exception as exc:
        raise UnsupportedModelError(f"ONNX Runtime's dynamic quantization failed: {str(exc).splitlines()[0][:300]}") from exc


def convert_float16(source: Path, target: Path, exclude: tuple[str, ...] = ()) -> list[str]:
    """FP16 weights and compute, float32 inputs/outputs, numerically sensitive ops kept in FP32.

    Returns the names of the nodes kept in FP32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(source))
    kept = [n.name for n in model.graph.node if n.op_type in FLOAT32_SENSITIVE_OPS or n.name in exclude]
    with _quiet():
        converted = OnnxModel(convert_float_to_float16(model, keep_io_types=True, op_block_list=list(FLOAT32_SENSITIVE_OPS), node_block_list=list(exclude)))
        converted.topological_sort()  # the converter appends its input casts at the end of the graph
    unseal(converted.model)  # a converted graph: the source's checksum no longer holds
    onnx.save_model(converted.model, str(target))
    return kept


def convert_bfloat16(source: Path, target: Path, exclude: tuple[str, ...] = ()) -> list[str]:
    """BF16 as TensorRT's strongly typed builder wants it: the FP16 conversion's layout (same ops
    kept in FP32, same casts), retyped to BF16, weights rounded from the original FP32 values.
    ONNX Runtime's CPU kernels do not run BF16; TensorRT (or onnx's checker here) does the checking."""
    import numpy as np
    import onnx
    import onnx.version_converter
    from onnx import TensorProto, helper, numpy_helper

    # ONNX's Conv (and a few other ops) take bfloat16 only from opset 22: upgrade the graph first.
    fp32 = onnx.load(str(source))
    if max((o.version for o in fp32.opset_import if o.domain in ("", "ai.onnx")), default=0) < BF16_OPSET:
        fp32 = onnx.version_converter.convert_version(fp32, BF16_OPSET)
    upgraded = target.with_suffix(".opset22.onnx")
    onnx.save_model(fp32, str(upgraded))
    kept = convert_float16(upgraded, target, exclude)
    model = onnx.load(str(target))
    originals = {t.name: t for t in fp32.graph.initializer}

    def retyped(tensor):
        base = originals.get(tensor.name, tensor)
        values = numpy_helper.to_array(base).astype(np.float32)
        return helper.make_tensor(tensor.name, TensorProto.BFLOAT16, list(values.shape), values.flatten().tolist())

    for index, tensor in enumerate(model.graph.initializer):
        if tensor.data_type == TensorProto.FLOAT16:
            model.graph.initializer[index].CopyFrom(retyped(tensor))
    for node in model.graph.node:
        for attribute in node.attribute:
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == TensorProto.FLOAT16:
                attribute.i = TensorProto.BFLOAT16
            elif attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == TensorProto.FLOAT16:
                attribute.t.CopyFrom(retyped(attribute.t))
    for value in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            value.type.tensor_type.elem_type = TensorProto.BFLOAT16
    unseal(model)
    onnx.save_model(model, str(target))
    return kept
