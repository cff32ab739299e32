"""`aiopt quantize --backend torch`: reduced precision that stays in PyTorch.

- dynamic: INT8 weights for Linear and LSTM (torch.ao's dynamic quantization; the LSTM's
  matmuls run in INT8, which ORT's static QDQ cannot do for recurrent cells).
- fp16 / bf16: weights and compute in 16 bits, inputs and outputs in float32; LayerNorm
  stays in float32 (its mean/variance reductions are what 16 bits loses).

The result is TorchScript with aiopt's metadata inside: it loads without aiopt's model code.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from aiopt.errors import InputError, UnsupportedModelError

TORCH_METHODS = ("dynamic", "fp16", "bf16")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class _ReducedPrecision(nn.Module):
    """Runs `model` in `dtype` behind float32 inputs and outputs."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


class _Float32LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def reduce_precision(model: nn.Module, method: str) -> nn.Module:
    """A new module computing `model` at `method`'s precision (the input model is not changed)."""
    import copy

    if method not in TORCH_METHODS:
        raise InputError(f"--backend torch supports --method {', '.join(TORCH_METHODS)}; for static INT8 use --backend onnxruntime")
    model = copy.deepcopy(model).eval()
    if method == "dynamic":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's deprecation notice: the kernels are what we want
            return torch.ao.quantization.quantize_dynamic(model, {nn.Linear, nn.LSTM}, dtype=torch.qint8)
    for name, child in list(model.named_modules()):
        if isinstance(child, nn.LayerNorm):
            replacement = _Float32LayerNorm(child.normalized_shape, child.eps, child.elementwise_affine)
            replacement.load_state_dict(child.state_dict())
            _set_submodule(model, name, replacement)
    dtype = _DTYPES[method]
    model = model.to(dtype)
    for module in model.modules():
        if isinstance(module, _Float32LayerNorm):
            module.float()
    return _ReducedPrecision(model, dtype)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


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
    from aiopt.artifacts import METADATA_KEY
    from aiopt.fileio import write_with

    write_with(path, lambda fh: torch.jit.save(module, fh, _extra_files={METADATA_KEY: json.dumps(metadata)}))
