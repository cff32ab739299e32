"""Which layers break quality when quantized, measured on calibration data (no labels).

ONNX Runtime's own QDQ debugging tool (`onnxruntime.quantization.qdq_loss_debug`) runs the
float and the QDQ model side by side and gives the signal-to-quantization-noise ratio (SQNR,
dB) of every activation and weight. A compute node's sensitivity is the worst SQNR among its
inputs: low means its INT8 inputs carry little of the float signal (outliers stretch the
range). The most sensitive nodes are the ones worth keeping in float.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from aiopt.export.float16 import quiet_tools
from aiopt.quantize.calibration import OrtCalibrationReader
from aiopt.quantize.recipes import onnxruntime as onnx_quant

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
    with quiet_tools():
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
        # the activation and the weight: a bias is INT32 at the product of their scales (an all-zero
        # bias would score 0 dB and hide the layer that really loses the signal)
        scores = [_finite(sqnr[name]) for name in node.input[:2] if name in sqnr]
        if scores:
            ranked.append((node.name, min(scores)))
    return sorted(ranked, key=lambda item: item[1])


def _finite(value: float) -> float:
    return float(value) if value is not None and math.isfinite(value) else math.inf


def rank_on_calibration(float_path: Path, qdq_path: Path, calibration, spec, work: Path) -> list[tuple[str, float]]:
    """rank_sensitive_nodes on the first RANKING_SAMPLES calibration samples, in one batch."""

    key = (str(float_path), str(qdq_path), Path(qdq_path).stat().st_mtime_ns)
    if key not in _RANKED:  # the diagnosis and mixed precision may both ask for the same file
        few = replace(calibration, inputs={k: v[:RANKING_SAMPLES] for k, v in calibration.inputs.items()})
        _RANKED.clear()
        _RANKED[key] = rank_sensitive_nodes(float_path, qdq_path, OrtCalibrationReader(few, spec, RANKING_SAMPLES), work)
    return _RANKED[key]


_RANKED: dict[tuple, list[tuple[str, float]]] = {}  # the last ranking (files live in one run's work folder)


def noisiest_layers(ranked: list[tuple[str, float]], count: int = 3) -> str:
    """The layers that cost the most, in one short line: "conv2 (12.3 dB), head (15.0 dB)"."""
    return ", ".join(f"{name} ({sqnr:.1f} dB)" if math.isfinite(sqnr) else name for name, sqnr in ranked[:count])


def diagnose(candidates, float_path: Path, calibration, spec, work: Path, limit: int = 2) -> list[str]:
    """For the static QDQ candidates (ONNX Runtime's, whose tensor names its QDQ debugger
    matches) that miss the quality floor, the `limit` closest to it: the layers with the most
    quantization noise, recorded in each one's recipe; returns one short line per candidate.
    No labels needed: SQNR of every quantized layer's inputs on calibration data. A graph the
    debugger cannot read gets no line (the verdict stands without a diagnosis)."""
    if calibration is None:
        return []
    missed = [c for c in candidates if c.problem and c.quality is not None and c.recipe.get("method") == "static" and c.runtime == "onnxruntime"
              and "@" not in c.name and Path(c.path).is_file()]
    lines, seen = [], set()
    for candidate in missed:
        if len(lines) >= limit or candidate.path in seen:
            continue
        seen.add(candidate.path)
        try:
            ranked = rank_on_calibration(float_path, Path(candidate.path), calibration, spec, work)
        except Exception:  # noqa: BLE001 -- a diagnosis must never end the command
            continue
        if not ranked:
            continue
        candidate.recipe = {**candidate.recipe, "noisiest_layers": {name: round(v, 2) for name, v in ranked[:5] if math.isfinite(v)}}
        lines.append(f"{candidate.name} misses the floor; most quantization noise (SQNR, calibration data) at {noisiest_layers(ranked)}")
    return lines
