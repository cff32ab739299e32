"""TensorRT INT8 from any model: TensorRT 11 builds the precision its ONNX carries, so an INT8
engine is built from the symmetric QDQ model `aiopt quantize --backend tensorrt` writes. The two
steps are composed here, above both: export/tensorrt.py builds, this package quantizes, and
export/ never imports quantize.
"""
from __future__ import annotations

import os
from pathlib import Path

from aiopt.artifacts import load_model
from aiopt.export import tensorrt
from aiopt.export.tensorrt import TensorRTConfig
from aiopt.quantize.config import QuantizeConfig
from aiopt.quantize.run import quantize_artifact


def prepare_onnx(source: str | os.PathLike, work: Path, precision: str, trust_pickle: bool = False, input_spec=None) -> tuple[Path, dict]:
    """export.tensorrt.prepare_onnx, with INT8 made from any model by quantizing it for TensorRT first."""
    if precision == "int8" and not tensorrt.is_tensorrt_qdq(load_model(source, trust_pickle=trust_pickle, input_spec=input_spec)):
        target = work / "int8-qdq.onnx"
        result = quantize_artifact(source, target, QuantizeConfig(backend="tensorrt"), force=True, trust_pickle=trust_pickle, input_spec=input_spec)
        return target, {"source": "aiopt quantize --backend tensorrt", "accuracy": result.report.get("accuracy")}
    return tensorrt.prepare_onnx(source, work, precision, trust_pickle, input_spec)


def export_tensorrt(source: str | os.PathLike, output: str | os.PathLike, config: TensorRTConfig = TensorRTConfig(), force: bool = False,
                    trust_pickle: bool = False, input_spec=None) -> dict:
    """`aiopt export --format tensorrt` (export.tensorrt.export_tensorrt), INT8 from any model."""
    return tensorrt.export_tensorrt(source, output, config, force, trust_pickle, input_spec, prepare=prepare_onnx)
