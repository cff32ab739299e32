"""Input/output specs: a list of named tensors with symbolic dims, never a single shape.

A dim is an int or a symbol ("batch", "seq"). Specs are plain data so they go into
artifact metadata as JSON and come back unchanged. The batch is the axis named "batch",
wherever it sits (a recurrent state `2 x batch x 128` has it on axis 1); a scalar input has
no axis at all, and an input with a fixed `value` (a sample rate) is fed by the Runner.
Data arrays are held sample-first inside aiopt; `to_model_layout` puts the sample axis back
where the model has its batch.
"""
from __future__ import annotations

from collections import Counter
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
    value: float | int | None = None  # a fixed input (e.g. a sample rate): the Runner feeds it

    def to_dict(self) -> dict:
        data = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.value is not None:
            data["value"] = self.value
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TensorSpec":
        return cls(name=str(data["name"]), shape=tuple(data["shape"]), dtype=str(data.get("dtype", "float32")), value=data.get("value"))

    @property
    def batch_axis(self) -> int | None:
        """Where the batch sits: the axis named "batch", else None (a scalar, a fixed input)."""
        return self.shape.index("batch") if "batch" in self.shape else None

    @property
    def sample_shape(self) -> tuple[Dim, ...]:
        """One sample's shape: the shape without its batch axis (axis 0 for a static batch)."""
        axis = self.batch_axis if self.batch_axis is not None else 0
        return self.shape[:axis] + self.shape[axis + 1:]

    def fixed_array(self):
        """The fixed value as the array the model takes (fixed inputs only)."""
        import numpy as np

        return np.full(tuple(d if isinstance(d, int) else 1 for d in self.shape), self.value, dtype=self.dtype)

    def concrete_shape(self, batch_size: int = 1, seq_len: int = 1, **dims: int) -> tuple[int, ...]:
        """Replace symbolic dims: `batch` by batch_size, others by `dims`, else by seq_len."""
        sizes = {"batch": batch_size, **dims}
        return tuple(d if isinstance(d, int) else int(sizes.get(d, seq_len)) for d in self.shape)

    def __str__(self) -> str:
        return f"{self.name}: {'x'.join(str(d) for d in self.shape)} {self.dtype}"


def to_model_layout(array, spec: TensorSpec):
    """A sample-first array with its sample axis moved to where `spec` has the batch."""
    import numpy as np

    axis = spec.batch_axis
    return array if not axis else np.moveaxis(array, 0, axis)


def to_sample_first(array, spec: TensorSpec):
    """The inverse of `to_model_layout`: a model-layout array with its batch axis first."""
    import numpy as np

    axis = spec.batch_axis
    return array if not axis else np.moveaxis(array, axis, 0)


def fixed_batch(specs: Sequence[TensorSpec]) -> int | None:
    """The batch size a static-batch model takes, or None when its batch is dynamic: the first
    data input's first axis when no input names a batch axis (a state `2 x batch x 128`
    has a dynamic batch on axis 1, not a fixed batch of 2)."""
    fed = [s for s in specs if s.value is None and s.shape]
    if not fed or any(s.batch_axis is not None for s in fed):
        return None
    first = fed[0].shape[0]
    return first if isinstance(first, int) else None


def fed_by_data(specs: Sequence[TensorSpec]) -> list[TensorSpec]:
    """The inputs data must supply: all but the fixed ones."""
    return [s for s in specs if s.value is None]


def name_the_batch(specs: Sequence[TensorSpec]) -> list[TensorSpec]:
    """An exporter's name for the batch axis ("N", "batch_size", "unk__0") renamed "batch": the
    symbol most inputs have first; an input whose first axis is fixed (a state `2 x N x 128`)
    gets it wherever that symbol sits."""
    if any("batch" in s.shape for s in specs):
        return list(specs)
    firsts = Counter(s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], str))
    if not firsts:
        return list(specs)
    symbol = firsts.most_common(1)[0][0]
    if symbol != "?":
        return [TensorSpec(s.name, tuple("batch" if d == symbol else d for d in s.shape), s.dtype, s.value) for s in specs]
    # unnamed dynamic dims ("?") are not one dim: the batch is each input's first of them
    named = []
    for s in specs:
        first = s.shape.index("?") if "?" in s.shape else None
        named.append(TensorSpec(s.name, tuple("batch" if axis == first else d for axis, d in enumerate(s.shape)), s.dtype, s.value))
    return named


def parse_fixed_inputs(values: Sequence[str]) -> dict[str, float | int]:
    """`--input NAME=VALUE` values: inputs that always take one value (a sample rate)."""
    fixed = {}
    for text in values or ():
        name, _, value = text.partition("=")
        try:
            number = float(value) if any(c in value.lower() for c in ".e") and not value.lower().startswith("0x") else int(value)
        except ValueError:
            number = None
        if not name or number is None:
            raise InputError(f"--input {text!r} is malformed; write NAME=NUMBER, e.g. --input sr=16000")
        fixed[name.strip()] = number
    return fixed


def with_fixed_values(specs: Sequence[TensorSpec], fixed: dict[str, float | int]) -> list[TensorSpec]:
    """`specs` with the fixed inputs' values set; an unknown name is refused."""
    names = [s.name for s in specs]
    unknown = [n for n in fixed if n not in names]
    if unknown:
        raise InputError(f"--input names {unknown[0]!r}, which the model does not take; its inputs: {', '.join(names)}")
    return [TensorSpec(s.name, s.shape, s.dtype, fixed[s.name]) if s.name in fixed else s for s in specs]


def specs_to_json(specs: Sequence[TensorSpec]) -> list[dict]:
    return [s.to_dict() for s in specs]


def specs_from_json(data: Sequence[dict] | None) -> list[TensorSpec]:
    return [TensorSpec.from_dict(d) for d in data or []]


_SHAPE_RE = re.compile(r"^(?:(?P<name>[A-Za-z_][\w.]*):)?(?P<dims>[^:]+)$")


_SYMBOL_RE = re.compile(r"^[a-z_][a-z0-9_]*$")


def parse_input_shapes(shapes: Sequence[str], dtypes: Sequence[str] = ()) -> list[TensorSpec]:
    """Parse CLI `--input-shape` values: `1x40`, or `name:1x40` for one of several inputs.

    A dim is a positive size or a symbol (`batchx64`, `input_ids:batchxseq`): symbols are dynamic
    axes. A shape that names `batch` keeps it where it is (`state:2xbatchx128`); otherwise the
    first dim is the batch and becomes symbolic. `--input-dtype` values pair with the shapes in
    order (one dtype applies to all).
    """
    specs = []
    for index, text in enumerate(shapes):
        match = _SHAPE_RE.match(text.strip())
        dims_text = match.group("dims").lower().split("x") if match else []
        well_formed = bool(dims_text) and (_is_size(dims_text[0]) or "batch" in dims_text) and dims_text.count("batch") <= 1 and all(
            _is_size(d) or _SYMBOL_RE.match(d) for d in dims_text)
        if not match or not well_formed:
            raise InputError(
                f"--input-shape {text!r} is malformed; write sizes or names (without an x) joined by 'x', with the batch first "
                "(a size or 'batch') or named 'batch' once where it sits: 1x40, batchx64, input_ids:batchxseq, state:2xbatchx128"
            )
        dims = [int(d) if _is_size(d) else d for d in dims_text]
        name = match.group("name") or ("x" if len(shapes) == 1 else f"input_{index}")
        if any(s.name == name for s in specs):
            raise InputError(f"--input-shape names input {name!r} twice; give each input once")
        shape = tuple(dims) if "batch" in dims else ("batch", *dims[1:])
        specs.append(TensorSpec(name=name, shape=shape, dtype=_dtype_for(index, dtypes)))
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
