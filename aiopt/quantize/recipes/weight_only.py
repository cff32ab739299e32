"""Weight-only INT8: the float weights an INT8 compute path leaves behind (embedding tables,
GRU/LSTM weights, layers kept in float) stored as int8 with a float scale per output channel.

The graph turns them back into float with `Cast` + `Mul` on constants, which ONNX Runtime and
OpenVINO fold once when the session is created: the file is about 4x smaller for those
tensors and inference runs exactly the float kernels it ran before, at their speed.
(`DequantizeLinear` would not do: ONNX Runtime keeps it unfolded, to fuse QDQ patterns, and
would dequantize the weights on every call. ONNX Runtime's weight-only tools target MatMul in
4 bits, and a GRU has no INT8 kernel there at all, which is why this is written here.)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from aiopt.artifacts.checks import unseal
from aiopt.quantize.candidates import BuildContext, Candidate, Unavailable

MIN_ELEMENTS = 1024  # smaller tensors are not worth two nodes
# Per op, (input index, axis of the output channels) of the weights worth compressing.
_WEIGHTS = {
    "Gather": ((0, 0),),  # embedding table rows
    "GRU": ((1, 1), (2, 1)),  # W and R: [directions, gates*hidden, input]
    "LSTM": ((1, 1), (2, 1)),
    "RNN": ((1, 1), (2, 1)),
    "Conv": ((1, 0),),
    "ConvTranspose": ((1, 1),),
    "MatMul": ((1, -1),),
    "Gemm": ((1, None),),  # axis from transB
}


def quantize_weights_int8(source: Path, target: Path) -> list[str]:
    """Write `source` with its float weights stored in INT8 to `target`.
    Returns the names of the tensors stored in INT8 (empty: nothing written)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    chosen: dict[str, int] = {}
    for node in graph.node:
        for index, axis in _WEIGHTS.get(node.op_type, ()):
            name = node.input[index] if len(node.input) > index else ""
            tensor = initializers.get(name)
            if tensor is None or tensor.data_type != TensorProto.FLOAT or int(np.prod(tensor.dims)) < MIN_ELEMENTS:
                continue
            if consumers.get(name, 0) != 1 or name in chosen or len(tensor.dims) < 2:
                continue
            if axis is None:  # Gemm: B is [K, N], or [N, K] with transB
                axis = 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
            chosen[name] = axis % len(tensor.dims)
    if not chosen:
        return []
    decode = []
    for name, axis in chosen.items():
        weights = numpy_helper.to_array(initializers[name]).astype(np.float32)
        reduce = tuple(a for a in range(weights.ndim) if a != axis)
        scale = (np.maximum(np.abs(weights).max(axis=reduce, keepdims=True), 1e-12) / 127.0).astype(np.float32)
        quantized = np.clip(np.round(weights / scale), -127, 127).astype(np.int8)
        graph.initializer.remove(initializers[name])
        graph.initializer.extend([numpy_helper.from_array(quantized, name + "_int8"), numpy_helper.from_array(scale, name + "_scale")])
        decode += [helper.make_node("Cast", [name + "_int8"], [name + "_as_float"], name=name + "_cast", to=TensorProto.FLOAT),
                   helper.make_node("Mul", [name + "_as_float", name + "_scale"], [name], name=name + "_rescale")]
    nodes = decode + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    unseal(model)  # a rewritten graph: the source's checksum no longer holds
    onnx.save_model(model, str(target))
    return list(chosen)


def weights_int8(ctx: BuildContext) -> Candidate:
    target = ctx.target("int8-weights")
    touched = quantize_weights_int8(ctx.prepared, target)
    if not touched:
        raise Unavailable("no float weights large enough to store in INT8")
    return Candidate("int8-weights", "int8-weights", "onnxruntime", target,
                     {"method": "weight-only INT8 (per output channel), folded back to float when the session loads: FP32 compute",
                      "tensors": touched})
