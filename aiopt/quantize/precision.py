"""What a written ONNX graph holds, read from the file itself (never from the recipe's name).

A recipe can succeed and change nothing: ONNX Runtime's dynamic quantization covers MatMul,
Gemm and recurrent cells, so a conv net comes out of it as the same FP32 graph. The file name,
the candidate's label and the report say what is in the file: INT8 only when the graph has
INT8 tensors or quantized ops. How a runtime computes (OpenVINO running an FP32 graph in BF16)
is a separate fact, reported beside it.
"""
from __future__ import annotations

import os
from pathlib import Path

# Ops that only exist in quantized graphs (ONNX standard and ONNX Runtime's com.microsoft domain).
QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "MatMulNBits",
    "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "QAttention", "QGemm", "QOrderedMatMul",
    "MatMulBnb4", "GatherBlockQuantized", "FakeQuantize",
})
QUANTIZED_PREFIXES = ("QLinear",)


def _tensor_types(graph):
    """(element type, element count) of every constant tensor: initializers, Constant nodes, subgraphs."""
    import onnx

    for tensor in graph.initializer:
        yield tensor.data_type, _count(tensor.dims)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR and node.op_type == "Constant":
                yield attribute.t.data_type, _count(attribute.t.dims)
            elif attribute.type == onnx.AttributeProto.GRAPH:
                yield from _tensor_types(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    yield from _tensor_types(subgraph)


def _ops(graph):
    import onnx

    for node in graph.node:
        yield node.op_type
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _ops(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    yield from _ops(subgraph)


def _count(dims) -> int:
    count = 1
    for dim in dims:
        count *= int(dim)
    return count


def graph_precision(model_or_path) -> str:
    """"int8" (INT8/UINT8/INT4 tensors or quantized ops), else "fp16" or "bf16" when most float
    weight elements are stored in that type, else "fp32"."""
    import onnx

    model = onnx.load_model(str(model_or_path), load_external_data=False) if isinstance(model_or_path, (str, os.PathLike)) else model_or_path
    TP = onnx.TensorProto
    low_bit = {TP.INT8, TP.UINT8, TP.INT4, TP.UINT4}
    elements: dict[int, int] = {}
    for data_type, count in _tensor_types(model.graph):
        elements[data_type] = elements.get(data_type, 0) + count
    # a few bytes of uint8 (a mask constant) are not weights; quantized weights come with their ops anyway
    if sum(elements.get(t, 0) for t in low_bit) >= 64 or any(op in QUANTIZED_OPS or op.startswith(QUANTIZED_PREFIXES) for op in _ops(model.graph)):
        return "int8"
    floats = {name: elements.get(t, 0) for name, t in (("fp32", TP.FLOAT), ("fp16", TP.FLOAT16), ("bf16", TP.BFLOAT16))}
    return max(floats, key=lambda name: (floats[name], name == "fp32"))


def artifact_precision(paths) -> str:
    """The precision the name of an artifact made of `paths` (main file and companions) may
    claim: "int8" when any of its graphs holds INT8, else the main (first) file's."""
    found = [graph_precision(Path(p)) for p in paths]
    return "int8" if "int8" in found else found[0]


def output_suffix(paths) -> str:
    """`.int8.onnx`, `.fp16.onnx`, `.bf16.onnx` or `.fp32.onnx`, by what the files hold."""
    return f".{artifact_precision(paths)}.onnx"


def honest_label(label: str, path) -> tuple[str, str | None]:
    """A candidate's precision label checked against its file: (label, why it changed or None).
    A recipe labelled INT8 whose graph holds no INT8 is what it is, FP32 (or FP16/BF16)."""
    if not label.startswith("int8"):
        return label, None
    held = graph_precision(Path(path))
    if held == "int8":
        return label, None
    return held, f"the written graph holds no INT8 tensor or quantized op (the recipe quantized nothing here): {held.upper()}"


def weights_only(model_or_path) -> bool:
    """INT8 weights dequantized back to float (DequantizeLinear on constants, nothing quantizes
    an activation): stored in INT8, computed in float."""
    import onnx

    model = onnx.load_model(str(model_or_path), load_external_data=False) if isinstance(model_or_path, (str, os.PathLike)) else model_or_path
    ops = {op for op in _ops(model.graph) if op in QUANTIZED_OPS or op.startswith(QUANTIZED_PREFIXES)}
    return ops == {"DequantizeLinear"}


def compute_precision(stored: str, runtime: str, serving: dict, float_compute: bool = False) -> str:
    """How the runtime computes: OpenVINO's inference precision hint sets the float parts;
    `float_compute`: INT8 weights only, dequantized to float."""
    hint = (serving or {}).get("inference_precision")
    floats = {"bf16": "BF16", "f16": "FP16"}.get(hint, hint.upper()) if runtime == "openvino" and hint and hint != "f32" else "FP32"
    where = " (OpenVINO inference precision)" if floats != "FP32" else ""
    if stored != "int8":
        return f"{floats}{where}" if floats != "FP32" else stored.upper()
    if float_compute:
        return f"{floats}{where}, weights stored in INT8"
    return f"INT8, float parts in {floats}{where}" if where else "INT8"


def relabel(candidates, say=lambda message: None) -> None:
    """Every built candidate's precision label checked against its file (see honest_label)."""
    for candidate in candidates:
        if candidate.problem or not Path(candidate.path).is_file():
            continue
        candidate.precision, why = honest_label(candidate.precision, candidate.path)
        if why:
            candidate.recipe = {**candidate.recipe, "precision_note": why}
            say(f"{candidate.name}: {why}")


def describe(candidate) -> dict:
    """What the chosen artifact stores and how it runs, per file for a by-batch artifact."""
    routes = candidate.recipe.get("dispatch") or []
    if not routes:
        stored = graph_precision(Path(candidate.path))
        return {"stored": stored, "compute": compute_precision(stored, candidate.runtime, candidate.serving, weights_only(Path(candidate.path)))}
    per_route = []
    for route in routes:
        stored = graph_precision(Path(route["path"]))
        per_route.append({"max_batch": route["max_batch"], "stored": stored,
                          "compute": compute_precision(stored, route["runtime"], {**route.get("serving", {}), **candidate.serving},
                                                       weights_only(Path(route["path"])))})
    files = [candidate.path, *[Path(r["path"]) for r in routes]]
    return {"stored": artifact_precision(files), "compute": "; ".join(f"batch {'<= ' + str(r['max_batch']) if r['max_batch'] else 'above'}: {r['compute']}" for r in per_route),
            "routes": per_route}
