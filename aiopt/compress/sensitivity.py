"""Which layers break quality when quantized, measured on calibration data (no labels).

ONNX Runtime's own QDQ debugging tool (`onnxruntime.quantization.qdq_loss_debug`) runs the
float and the QDQ model side by side and gives the signal-to-quantization-noise ratio (SQNR,
dB) of every activation and weight. A compute node's sensitivity is the worst SQNR among its
inputs: low means its INT8 inputs carry little of the float signal (outliers stretch the
range). The most sensitive nodes are the ones worth keeping in float.
"""
from __future__ import annotations

import math
from pathlib import Path

from aiopt.compress import onnx_quant


def rank_sensitive_nodes(float_path: Path, qdq_path: Path, reader, work: Path) -> list[tuple[str, float]]:
    """(node name, SQNR in dB) of every quantized compute node, most sensitive first."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        compute_weight_error,
        create_activation_matching,
        create_weight_matching,
        modify_model_output_intermediate_tensors,
    )

    augmented_float, augmented_qdq = work / "sensitivity-float.onnx", work / "sensitivity-qdq.onnx"
    with onnx_quant._quiet():
        modify_model_output_intermediate_tensors(str(float_path), str(augmented_float))
        modify_model_output_intermediate_tensors(str(qdq_path), str(augmented_qdq))
        reader.rewind()
        float_activations = collect_activations(str(augmented_float), reader)
        reader.rewind()
        qdq_activations = collect_activations(str(augmented_qdq), reader)
        activation_error = compute_activation_error(create_activation_matching(qdq_activations, float_activations))
        weight_error = compute_weight_error(create_weight_matching(str(float_path), str(qdq_path)))
    sqnr = {name: errors.get("qdq_err", math.inf) for name, errors in activation_error.items()}
    sqnr.update(weight_error)
    ranked = []
    for node in onnx.load(str(float_path), load_external_data=False).graph.node:
        if node.op_type not in onnx_quant.COMPUTE_OPS:
            continue
        scores = [_finite(sqnr[name]) for name in node.input if name in sqnr]
        if scores:
            ranked.append((node.name, min(scores)))
    return sorted(ranked, key=lambda item: item[1])


def _finite(value: float) -> float:
    return float(value) if value is not None and math.isfinite(value) else math.inf
