"""Input/output specs: a list of named tensors with symbolic dims, never a single shape.

A dim is an int or a symbol ("batch", "seq"). Specs are plain data so they go into
artifact metadata as JSON and come back unchanged.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from aiopt.errors import InputError

Dim = int | str

SUPPORTED_DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "bool", "uint8", "int8")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[Dim, ...]
    dtype: str = "float32"

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: dict) -> "TensorSpec":
        return cls(name=str(data["name"]), shape=tuple(data["shape"]), dtype=str(data.get("dtype", "float32")))

    def concrete_shape(self, batch_size: int = 1, seq_len: int = 1, **dims: int) -> tuple[int, ...]:
        """Replace symbolic dims: `batch` by batch_size, others by `dims`, else by seq_len."""
        sizes = {"batch": batch_size, **dims}
        return tuple(d if isinstance(d, int) else int(sizes.get(d, seq_len)) for d in self.shape)

    def __str__(self) -> str:
        return f"{self.name}: {'x'.join(str(d) for d in self.shape)} {self.dtype}"


def specs_to_json(specs: Sequence[TensorSpec]) -> list[dict]:
    return [s.to_dict() for s in specs]


def specs_from_json(data: Sequence[dict] | None) -> list[TensorSpec]:
    return [TensorSpec.from_dict(d) for d in data or []]


_SHAPE_RE = re.compile(r"^(?:(?P<name>[A-Za-z_][\w.]*):)?(?P<dims>[^:]+)$")


_SYMBOL_RE = re.compile(r"^[a-z_][a-z0-9_]*$")


def parse_input_shapes(shapes: Sequence[str], dtypes: Sequence[str] = ()) -> list[TensorSpec]:
    """Parse CLI `--input-shape` values: `1x40`, or `name:1x40` for one of several inputs.

    A dim is a positive size or a symbol (`batchx64`, `input_ids:batchxseq`): symbols are dynamic
    axes. The first dim (a size or `batch`) is always the batch dim and becomes symbolic; `--input-dtype` values pair
    with the shapes in order (one dtype applies to all).
    """
    specs = []
    for index, text in enumerate(shapes):
        match = _SHAPE_RE.match(text.strip())
        dims_text = match.group("dims").lower().split("x") if match else []
        well_formed = bool(dims_text) and (_is_size(dims_text[0]) or dims_text[0] == "batch") and all(
            _is_size(d) or _SYMBOL_RE.match(d) for d in dims_text[1:])
        if not match or not well_formed:
            raise InputError(
                f"--input-shape {text!r} is malformed; write the batch (a size or 'batch') then sizes or names (without an x), "
                "joined by 'x': 1x40, batchx64 or input_ids:batchxseq"
            )
        dims = [int(d) if _is_size(d) else d for d in dims_text]
        name = match.group("name") or ("x" if len(shapes) == 1 else f"input_{index}")
        if any(s.name == name for s in specs):
            raise InputError(f"--input-shape names input {name!r} twice; give each input once")
        specs.append(TensorSpec(name=name, shape=("batch", *dims[1:]), dtype=_dtype_for(index, dtypes)))
    return specs


def _is_size(text: str) -> bool:
    return text.isascii() and text.isdigit() and int(text) > 0


def _dtype_for(index: int, dtypes: Sequence[str]) -> str:
    if not dtypes:
        return "float32"
    dtype = dtypes[index] if index < len(dtypes) else dtypes[-1]
    if dtype not in SUPPORTED_DTYPES:
        raise InputError(f"--input-dtype {dtype!r} is not supported; use one of {', '.join(SUPPORTED_DTYPES)}")
    return dtype
