"""`aiopt quantize`: INT8 (static with calibration, or dynamic) and FP16 through ONNX Runtime,
OpenVINO or PyTorch, measured on the quantized artifact itself against the FP32 model it came from.

Flow: validate the config -> the measured choice (measured.py: every candidate this machine can
run, the fastest within the quality floor) or the forced recipe (forced.py) -> one writer
(write.py). Nothing is written if a check fails. The quantize step (steps.py) calls `quantize_artifact`.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace

from aiopt.quantize.config import QuantizeConfig, QuantizeResult, validate
from aiopt.quantize.forced import quantize_forced
from aiopt.quantize.measured import quantize_by_measurement
from aiopt.runtime.onnxruntime_backend import providers_for
from aiopt.runtime.torch_backend import torch_device


def quantize_artifact(
    source: str | os.PathLike,
    output: str | os.PathLike | None = None,
    config: QuantizeConfig = QuantizeConfig(),
    force: bool = False,
    trust_pickle: bool = False,
    input_spec=None,
    on_progress: Callable[[str], None] | None = None,
) -> QuantizeResult:
    validate(config)
    if config.backend == "auto" and not config.by_measurement:  # a forced --method keeps today's ONNX Runtime recipe
        config = replace(config, backend="onnxruntime")
    _check_device(config)
    say = on_progress or (lambda message: None)
    if config.by_measurement:
        return quantize_by_measurement(source, output, config, force, trust_pickle, input_spec, say)
    return quantize_forced(source, output, config, force, trust_pickle, input_spec, say)


def _check_device(config: QuantizeConfig) -> None:
    """--device cuda needs CUDA where the work runs: PyTorch for --backend torch, ONNX Runtime's
    CUDA provider otherwise (exit 4 before anything is loaded)."""
    if config.device == "cpu":
        return
    if config.backend == "torch":
        torch_device(config.device)
    else:
        providers_for(config.device)
