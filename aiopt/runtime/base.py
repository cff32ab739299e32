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

    def __init__(self, input_spec: list[TensorSpec], output_names: list[str], device: str = "cpu", source: str = ""):
        self.input_spec = list(input_spec)
        self.output_names = list(output_names)
        self.device = device
        self.source = source

    def __call__(self, inputs: Feed) -> dict[str, np.ndarray]:
        """Run one batch. `inputs`: a dict by input name, a list in spec order, or one array."""
        return self._infer(self.check_inputs(inputs))

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def check_inputs(self, inputs: Feed) -> dict[str, np.ndarray]:
        names = [s.name for s in self.input_spec]
        if isinstance(inputs, Mapping):
            missing, extra = [n for n in names if n not in inputs], [n for n in inputs if n not in names]
            if missing or extra:
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
        for spec, value in zip(self.input_spec, values):
            array = _to_numpy(value)
            _check_one(spec, array)
            feed[spec.name] = array
            if spec.shape and spec.shape[0] == "batch":
                batch_sizes.add(array.shape[0])
        if len(batch_sizes) > 1:
            raise InputError(f"inputs disagree on the batch size: {sorted(batch_sizes)}")
        return feed

    def describe(self) -> dict:
        return {"backend": self.backend, "device": self.device, "source": self.source,
                "inputs": [s.to_dict() for s in self.input_spec], "outputs": self.output_names}


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            raise InputError("bfloat16 tensors have no numpy equivalent; pass float32 inputs")
        return value.numpy()
    return np.asarray(value)


def _check_one(spec: TensorSpec, array: np.ndarray) -> None:
    expected_shape = " x ".join(str(d) for d in spec.shape)
    got_shape = " x ".join(str(d) for d in array.shape)
    if array.ndim != len(spec.shape) or any(isinstance(d, int) and d != a for d, a in zip(spec.shape, array.shape)):
        raise InputError(f"input {spec.name!r} has shape {got_shape}; the model expects {expected_shape}")
    if array.dtype.name != spec.dtype:
        raise InputError(f"input {spec.name!r} has dtype {array.dtype.name}; the model expects {spec.dtype} (cast it, e.g. x.astype(np.{spec.dtype}))")
