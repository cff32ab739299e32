"""FP16 and BF16 ONNX graphs: float tensors converted, numerically sensitive ops kept in FP32.

Below the quantize package on purpose: `aiopt export --format tensorrt` builds FP16/BF16 engines
from these graphs, and `aiopt quantize --method fp16` writes the same conversion; neither step
imports the other. `quiet_tools` silences ONNX Runtime's (and NNCF's) per-node chatter for both.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np

from aiopt.artifacts.checks import unseal

# Kept in float when converting to FP16/BF16: their reductions lose accuracy in 16 bits.
FLOAT32_SENSITIVE_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceL2", "Pow", "Sqrt", "Erf", "Exp", "Log")
BF16_OPSET = 22


@contextlib.contextmanager
def quiet_tools():
    """ORT's quantizer (and converter) logs and prints per-node chatter; users see our summary instead."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)



def convert_float16(source: Path, target: Path, exclude: tuple[str, ...] = ()) -> list[str]:
    """FP16 weights and compute, float32 inputs/outputs, numerically sensitive ops kept in FP32.

    Returns the names of the nodes kept in FP32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(source))
    kept = [n.name for n in model.graph.node if n.op_type in FLOAT32_SENSITIVE_OPS or n.name in exclude]
    with quiet_tools():
        converted = OnnxModel(convert_float_to_float16(model, keep_io_types=True, op_block_list=list(FLOAT32_SENSITIVE_OPS), node_block_list=list(exclude)))
        converted.topological_sort()  # the converter appends its input casts at the end of the graph
    unseal(converted.model)  # a converted graph: the source's checksum no longer holds
    onnx.save_model(converted.model, str(target))
    return kept


def convert_bfloat16(source: Path, target: Path, exclude: tuple[str, ...] = ()) -> list[str]:
    """BF16 as TensorRT's strongly typed builder wants it: the FP16 conversion's layout (same ops
    kept in FP32, same casts), retyped to BF16, weights rounded from the original FP32 values.
    ONNX Runtime's CPU kernels do not run BF16; TensorRT (or onnx's checker here) does the checking."""
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
