"""NNCF post-training INT8 for OpenVINO (optional extra `aiopt[openvino]`).

Route: NNCF's ONNX backend (onnx.ModelProto in, QDQ ONNX out), one file that OpenVINO runs
with its INT8 kernels and ONNX Runtime can still load. Measured on this 2-core EPYC (VNNI)
against NNCF's OpenVINO-IR route (ov.Model -> nncf.quantize -> .xml/.bin): the runtime graphs
OpenVINO compiles from the two are the same (every Convolution/FullyConnected in u8/i8),
with the same accuracy and latency (base CNN batch 64: 1.01 ms FP32 -> 0.27 ms on either), so
the single-file ONNX artifact is kept.

Calibration batches are fed as given: NNCF's activation ranges average per-item min/max, and
items of one sample gave narrower ranges and lost accuracy (base Transformer: 99.2% top-1
agreement with batches of 32, 65% with single samples).
"""
from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path

import numpy as np

from aiopt.artifacts.checks import unseal
from aiopt.errors import InputError, UnsupportedModelError, first_line
from aiopt.export.float16 import quiet_tools
from aiopt.fileio import atomic_path
from aiopt.quantize.calibration import OrtCalibrationReader
from aiopt.quantize.candidates import BuildContext, Candidate, Unavailable
from aiopt.runtime.openvino_backend import import_from_extra

ROUTE = "nncf-onnx-qdq"


def nncf_int8(source: Path, target: Path, calibration: list[dict[str, np.ndarray]], *, transformer: bool = False,
              ignored_scope: list[str] = (), subset_size: int = 300, smooth_quant: bool = True) -> dict:
    """Quantize the FP32 ONNX model `source` to INT8 with NNCF and write it to `target` (QDQ ONNX).

    `calibration`: batches, each a dict input name -> array. `subset_size`: calibration samples
    used (rows, across batches). `transformer`: NNCF's ModelType.TRANSFORMER (it keeps the
    attention and normalisation ops that break in INT8 in float, and applies SmoothQuant);
    `smooth_quant=False` turns SmoothQuant off. `ignored_scope`: node names kept in float (with
    SmoothQuant, classifiers after mean pooling are added: see _pooled_matmuls).
    The caller embeds the aiopt metadata (with "runtime": "openvino")."""
    nncf = import_from_extra("nncf", "NNCF")
    import onnx

    if not calibration:
        raise InputError("NNCF INT8 needs calibration data; pass --calibration")
    model = onnx.load_model(str(source))
    rows = max(1, len(next(iter(calibration[0].values()))))
    ignored = list(ignored_scope)
    if transformer and smooth_quant:
        ignored += [name for name in _pooled_matmuls(model) if name not in ignored]
    options = _quantize_options(nncf, transformer, ignored, smooth_quant)
    with _quiet():
        try:
            # NNCF counts dataset items; ours are batches of `rows` samples.
            quantized = nncf.quantize(model, nncf.Dataset(calibration), subset_size=math.ceil(subset_size / rows), **options)
        except nncf.ValidationError as exc:
            raise InputError(f"NNCF refused the quantization settings: {first_line(exc)}") from exc
        except Exception as exc:
            raise UnsupportedModelError(f"NNCF could not quantize the model: {first_line(exc)}") from exc
    _save(quantized, Path(target))
    return {
        "path": str(target),
        "tool": "nncf",
        "nncf_version": nncf.__version__,
        "route": ROUTE,
        "format": "QDQ",
        "preset": options["preset"].value,
        "model_type": options["model_type"].value if options["model_type"] else None,
        "smooth_quant": bool(transformer and smooth_quant),
        "ignored_scope": ignored,
        "subset_size": min(subset_size, rows * len(calibration)),
        "quantized_nodes": sum(node.op_type == "QuantizeLinear" for node in quantized.graph.node),
        "runtime": "openvino",
    }


def _quantize_options(nncf, transformer: bool, ignored: list[str], smooth_quant: bool) -> dict:
    """NNCF's own defaults, spelled out for the record: PERFORMANCE (symmetric activations),
    and MIXED (asymmetric activations, which the outputs of GELU and softmax need) for Transformers."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    preset = nncf.QuantizationPreset.MIXED if transformer else nncf.QuantizationPreset.PERFORMANCE
    options = {"preset": preset, "model_type": nncf.ModelType.TRANSFORMER if transformer else None,
               "ignored_scope": nncf.IgnoredScope(names=ignored) if ignored else None}
    if transformer and not smooth_quant:
        options["advanced_parameters"] = AdvancedQuantizationParameters(smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1))
    return options


def _pooled_matmuls(model) -> list[str]:
    """MatMul/Gemm nodes fed by a Reduce* (a classifier after mean pooling), kept in float.

    OpenVINO 2026.4's CPU plugin miscomputes ReduceMean(keepdims=0) -> Mul(per-channel scale)
    -> QuantizeLinear/DequantizeLinear, the pattern SmoothQuant leaves before such a classifier:
    its outputs differ from ONNX Runtime's on the same file, more so as the batch grows (inf at
    batch 512). On the base Transformer that took top-1 accuracy from 56.4% to 18.6% at batch
    512; with the classifier kept in float OpenVINO agrees with ONNX Runtime at every batch."""
    producers = {output: node for node in model.graph.node for output in node.output}
    pooled = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        source = producers.get(node.input[0])
        while source is not None and source.op_type in ("Reshape", "Flatten", "Squeeze"):
            source = producers.get(source.input[0])
        if source is not None and source.op_type.startswith("Reduce"):
            pooled.append(node.name)
    return pooled


@contextlib.contextmanager
def _quiet():
    """NNCF draws progress bars on stdout (where --json goes) and logs per-step chatter."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with quiet_tools():
            yield
    finally:
        logger.setLevel(level)


def _save(model, target: Path) -> None:
    import onnx

    unseal(model)  # NNCF keeps the source's metadata, checksum included
    with atomic_path(target) as tmp:
        onnx.save_model(model, str(tmp))


# ---------------------------------------------------------------- the registry's builders

def fp32(ctx: BuildContext) -> Candidate:
    _require_openvino()
    return Candidate("fp32-openvino", "fp32", "openvino", ctx.prepared, {"graph": "the same FP32 ONNX, run by OpenVINO"})


def nncf(ctx: BuildContext) -> Candidate:
    _require_openvino()
    if ctx.calibration is None:
        raise Unavailable("no calibration data (pass --calibration)")
    target = ctx.target("int8-nncf-openvino")
    batches = _calibration_batches(ctx)
    info = nncf_int8(ctx.prepared, target, batches, transformer=ctx.is_transformer, ignored_scope=list(ctx.exclude))
    return Candidate("int8-nncf-openvino", "int8", "openvino", Path(info.get("path", target)), {"method": "NNCF post-training INT8", **info})


def _calibration_batches(ctx: BuildContext, batch_size: int = 32) -> list[dict]:
    reader = OrtCalibrationReader(ctx.calibration, ctx.spec, batch_size)
    return list(iter(reader.get_next, None))


def _require_openvino() -> None:
    try:
        import openvino  # noqa: F401
    except ImportError as exc:
        raise Unavailable("OpenVINO is not installed (pip install 'aiopt[openvino]')") from exc
