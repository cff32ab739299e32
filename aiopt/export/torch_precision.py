"""A PyTorch module computing in FP16 or BF16 behind float32 inputs and outputs, LayerNorm kept in
float32 (its mean/variance reductions are what 16 bits loses).

Below the quantize package on purpose: `aiopt export --format torch-cuda` exports this module, and
`aiopt quantize --backend torch --method fp16|bf16` scripts it; neither step imports the other.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from aiopt.errors import InputError

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


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


def cast_to(model: nn.Module, precision: str) -> nn.Module:
    """A new module computing `model` in `precision` ("fp16" or "bf16"; the input model is not changed)."""
    if precision not in DTYPES:
        raise InputError(f"reduced precision is one of {', '.join(DTYPES)}, not {precision!r}")
    model = copy.deepcopy(model).eval()
    for name, child in list(model.named_modules()):
        if isinstance(child, nn.LayerNorm):
            replacement = _Float32LayerNorm(child.normalized_shape, child.eps, child.elementwise_affine)
            replacement.load_state_dict(child.state_dict())
            _set_submodule(model, name, replacement)
    dtype = DTYPES[precision]
    model = model.to(dtype)
    for module in model.modules():
        if isinstance(module, _Float32LayerNorm):
            module.float()
    return _ReducedPrecision(model, dtype)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)
