"""`aiopt quantize --backend torch`: reduced precision that stays in PyTorch.

- dynamic: INT8 weights for Linear and LSTM (torch.ao's dynamic quantization; the LSTM's
  matmuls run in INT8, which ORT's static QDQ cannot do for recurrent cells).
- fp16 / bf16: weights and compute in 16 bits, inputs and outputs in float32; LayerNorm
  stays in float32 (export/torch_precision.py, which `aiopt export --format torch-cuda` shares).

The result is TorchScript with aiopt's metadata inside: it loads without aiopt's model code.
"""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from aiopt.artifacts import METADATA_KEY
from aiopt.errors import InputError, UnsupportedModelError
from aiopt.export.torch_precision import cast_to
from aiopt.fileio import write_with

TORCH_METHODS = ("dynamic", "fp16", "bf16")


def reduce_precision(model: nn.Module, method: str) -> nn.Module:
    """A new module computing `model` at `method`'s precision (the input model is not changed)."""
    if method not in TORCH_METHODS:
        raise InputError(f"--backend torch supports --method {', '.join(TORCH_METHODS)}; for static INT8 use --backend onnxruntime")
    if method != "dynamic":
        return cast_to(model, method)
    model = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice: the kernels are what we want
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear, nn.LSTM}, dtype=torch.qint8)


def to_torchscript(model: nn.Module, example: tuple) -> torch.jit.ScriptModule:
    if len(example) != 1:
        raise UnsupportedModelError("--backend torch handles single-input models; use --backend onnxruntime for several inputs")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            return torch.jit.trace(model, example, check_trace=False)
    except Exception as exc:
        raise UnsupportedModelError(f"TorchScript tracing of the quantized model failed: {str(exc).splitlines()[0][:300]}") from exc


def save_torchscript(module: torch.jit.ScriptModule, metadata: dict, path: Path) -> None:
    write_with(path, lambda fh: torch.jit.save(module, fh, _extra_files={METADATA_KEY: json.dumps(metadata)}))
