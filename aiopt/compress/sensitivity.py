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


# Samples the activations are collected on: ORT keeps every saved tensor of every batch in memory,
# and a Transformer's are large (all-MiniLM-L6-v2 on 256 sentences used over 24 GB).
RANKING_SAMPLES = 16


def rank_sensitive_nodes(float_path: Path, qdq_path: Path, reader, work: Path) -> list[tuple[str, float]]:
    """(node name, SQNR in dB) of every quantized compute node, most sensitive first. `reader`
    should hold few samples (RANKING_SAMPLES): only the tensors around Quantize/DequantizeLinear
    of the QDQ model are saved, but for every sample."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_signal_to_quantization_noice_ratio,
        compute_weight_error,
        create_activation_matching,
        create_weight_matching,
        modify_model_output_intermediate_tensors,
    )

    augmented_qdq = work / "sensitivity-qdq.onnx"
    with onnx_quant._quiet():
        # each activation before quantization (QuantizeLinear's input) and after (DequantizeLinear's output)
        modify_model_output_intermediate_tensors(str(qdq_path), str(augmented_qdq), op_types_for_saving=["QuantizeLinear", "DequantizeLinear"])
        reader.rewind()
        matching = create_activation_matching(collect_activations(str(augmented_qdq), reader))
        weight_error = compute_weight_error(create_weight_matching(str(float_path), str(qdq_path)))
    sqnr = {name: compute_signal_to_quantization_noice_ratio(pair["pre_qdq"], pair["post_qdq"]) for name, pair in matching.items()}
    sqnr.update(weight_error)
    augmented_qdq.unlink(missing_ok=True)
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
