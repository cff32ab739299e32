"""The one Runner contract every backend follows (Polygraphy's runners are the model).

`Runner.__call__` checks the inputs against `input_spec` once, here, then calls the
backend's `_infer`; backends hold no validation of their own.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from aiopt.errors import InputError
from aiopt.specs import TensorSpec

Feed = Mapping[str, Any] | Sequence[Any] | Any


class Runner:
    backend: str = "?"
    # Smallest and largest batch the artifact accepts (a TensorRT profile, torch-cuda buckets); None: any.
    batch_range: tuple[int, int] | None = None
    batch_range_hint = "rebuild it with --min-batch/--max-batch"

    def __init__(self, input_spec: list[TensorSpec], output_names: list[str], device: str = "cpu", source: str = ""):
        # fixed inputs (a sample rate) are fed here, so callers pass only the others
        self.fixed_inputs = {spec.name: spec.fixed_array() for spec in input_spec if spec.value is not None}
        self.model_inputs = [spec.name for spec in input_spec]  # every input, in the model's order
        self._fixed_names = set(self.fixed_inputs)
        self.input_spec = [spec for spec in input_spec if spec.value is None]
        # numpy dtypes resolved once: `array.dtype.name` costs microseconds on every call
        self._dtypes = [_numpy_dtype(spec.dtype) for spec in self.input_spec]
        self._names = [spec.name for spec in self.input_spec]
        # what the per-call check reads, one tuple per input (name, dtype, rank, fixed axes, batched): a
        # model of a few microseconds a call (a small CNN at batch 1) must not spend a tenth of it here
        self._quick = [(spec.name, dtype, len(spec.shape), tuple((axis, d) for axis, d in enumerate(spec.shape) if isinstance(d, int)),
                        spec.batch_axis) for spec, dtype in zip(self.input_spec, self._dtypes)]
        self.output_names = list(output_names)
        self.device = device
        self.source = source

    def __call__(self, inputs: Feed) -> dict[str, np.ndarray]:
        """Run one batch. `inputs`: a dict by input name, a list in spec order, or one array."""
        if type(inputs) is dict and self.batch_range is None and self._matches_exactly(inputs):
            return self._infer({**inputs, **self.fixed_inputs} if self.fixed_inputs else inputs)
        feed = self.check_inputs(inputs)
        return self._infer({**feed, **self.fixed_inputs} if self.fixed_inputs else feed)

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def drop_fixed_inputs_not_in(self, taken: list[str]) -> None:
        """A graph specialised for its fixed inputs (`If` on a sample rate folded away) no longer
        takes them: the Runner stops feeding those."""
        self.fixed_inputs = {k: v for k, v in self.fixed_inputs.items() if k in taken}

    def check_inputs(self, inputs: Feed) -> dict[str, np.ndarray]:
        feed = inputs if type(inputs) is dict and self._matches_exactly(inputs) else self._check_slowly(inputs)
        if self.batch_range is not None:
            spec = next((s for s in self.input_spec if s.batch_axis is not None), None)
            problem = self.batch_problem(feed[spec.name].shape[spec.batch_axis] if spec else len(next(iter(feed.values()))))
            if problem:
                raise InputError(problem)
        return feed

    def batch_problem(self, batch: int) -> str | None:
        """Why this artifact cannot take `batch` (outside its engine profile or buckets), or None."""
        if self.batch_range is None or self.batch_range[0] <= batch <= self.batch_range[1]:
            return None
        low, high = self.batch_range
        return f"batch size {batch} is outside the range this artifact was built for ({low}..{high}); {self.batch_range_hint}"

    def _matches_exactly(self, inputs: dict) -> bool:
        """The common case, checked without building anything: a dict of numpy arrays by name
        with the right dtypes and shapes (the bench harness overhead target is < 5%)."""
        if len(inputs) != len(self._quick):
            return False
        batch = None
        for name, dtype, ndim, fixed, batch_axis in self._quick:
            array = inputs.get(name)
            if type(array) is not np.ndarray or dtype is None or array.dtype != dtype or array.ndim != ndim:
                return False
            shape = array.shape
            for axis, size in fixed:
                if shape[axis] != size:
                    return False
            if batch_axis is not None:
                if batch is not None and batch != shape[batch_axis]:
                    return False
                batch = shape[batch_axis]
        return True

    def _check_slowly(self, inputs: Feed) -> dict[str, np.ndarray]:
        names = self._names
        if isinstance(inputs, Mapping):
            inputs = {k: v for k, v in inputs.items() if k not in self._fixed_names}  # a fixed input given anyway: the fixed value wins
            if len(inputs) != len(names) or any(n not in inputs for n in names):
                raise InputError(f"inputs do not match the model: expected {', '.join(names)}, got {', '.join(map(str, inputs)) or 'none'}")
            values = [inputs[n] for n in names]
        elif isinstance(inputs, (list, tuple)):
            values = list(inputs)
        else:
            values = [inputs]
        if len(values) != len(names):
            raise InputError(f"the model takes {len(names)} input(s) ({', '.join(names)}), got {len(values)}")
        feed: dict[str, np.ndarray] = {}
        batch_sizes = set()
        for spec, dtype, value in zip(self.input_spec, self._dtypes, values):
            array = _to_numpy(value)
            _check_one(spec, dtype, array)
            feed[spec.name] = array
            if spec.batch_axis is not None:
                batch_sizes.add(array.shape[spec.batch_axis])
        if len(batch_sizes) > 1:
            raise InputError(f"inputs disagree on the batch size: {sorted(batch_sizes)}")
        return feed

    def describe(self) -> dict:
        return {"backend": self.backend, "device": self.device, "source": self.source,
                "inputs": [s.to_dict() for s in self.input_spec], "outputs": self.output_names,
                **({"fixed_inputs": {k: v.tolist() for k, v in self.fixed_inputs.items()}} if self.fixed_inputs else {})}


def capped_threads(requested: int | None, serving: dict) -> int | None:
    """The threads a Runner uses: what the caller allows, capped by what the artifact measured
    best (`serving["threads"]`: e.g. batch 1 of a small model runs faster on one thread than on
    two, which spend more time handing work over than doing it)."""
    best = serving.get("threads")
    return best if best and (requested is None or requested > best) else requested


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            raise InputError("bfloat16 tensors have no numpy equivalent; pass float32 inputs")
        return value.numpy()
    return np.asarray(value)


def _numpy_dtype(name: str) -> np.dtype | None:
    try:
        return np.dtype(name)
    except TypeError:  # e.g. bfloat16: no numpy equivalent, compared by name
        return None


def _check_one(spec: TensorSpec, dtype: np.dtype | None, array: np.ndarray) -> None:
    # Runs on every inference: the happy path builds no strings (the bench harness overhead target is < 5%).
    if array.ndim != len(spec.shape) or any(isinstance(d, int) and d != a for d, a in zip(spec.shape, array.shape)):
        expected_shape = " x ".join(str(d) for d in spec.shape)
        got_shape = " x ".join(str(d) for d in array.shape)
        raise InputError(f"input {spec.name!r} has shape {got_shape}; the model expects {expected_shape}")
    if (array.dtype != dtype) if dtype is not None else (array.dtype.name != spec.dtype):
        raise InputError(f"input {spec.name!r} has dtype {array.dtype.name}; the model expects {spec.dtype} (cast it, e.g. x.astype(np.{spec.dtype}))")
