"""Padding is work too: run a masked model on the columns that hold tokens in some row.

A server that pads every request to a fixed length (or a batch to its longest member) sends
columns that are padding in every row. For a model with an attention mask those columns change
nothing in the real tokens' outputs, so cutting them off before the model runs is exact, and the
model does less work. That holds for outputs without a sequence axis (pooled embeddings,
logits); an output with one would come back shorter than the input, so trimming is refused for
it. Only trailing columns are cut: positions of the real tokens stay where they were.
"""
from __future__ import annotations

import numpy as np

from aiopt.errors import UnsupportedModelError
from aiopt.runtime.base import Runner
from aiopt.specs import TensorSpec

MASK_INPUT = "attention_mask"


class PaddingTrimRunner(Runner):
    """Wraps another Runner: each batch is cut after the last column where the mask is non-zero."""

    def __init__(self, inner: Runner, output_spec: list[TensorSpec], mask_name: str = MASK_INPUT):
        mask = next((s for s in inner.input_spec if s.name == mask_name), None)
        if mask is None or len(mask.shape) < 2 or not isinstance(mask.shape[1], str):
            raise UnsupportedModelError(f"padding can only be trimmed for a model with a dynamic {mask_name!r} input (batch x seq); "
                                        f"{inner.source or 'this model'} has none")
        seq = mask.shape[1]
        with_seq = [o.name for o in output_spec if seq in o.shape]
        if with_seq:
            raise UnsupportedModelError(f"output {with_seq[0]!r} has a {seq!r} axis: trimming padding would shorten it, so the "
                                        "outputs would differ from the untrimmed model's; trimming is only for pooled or class outputs")
        super().__init__(inner.input_spec, inner.output_names, inner.device, inner.source)
        self.inner, self.mask_name = inner, mask_name
        self.backend = inner.backend
        self.batch_range, self.batch_range_hint = inner.batch_range, inner.batch_range_hint
        # which axis of each input is the sequence axis (None: not sliced)
        self._seq_axes = {s.name: (s.shape.index(seq) if seq in s.shape else None) for s in inner.input_spec}

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        mask = feed[self.mask_name]
        used = np.flatnonzero(mask.any(axis=0))
        length = int(used[-1]) + 1 if used.size else 1
        if length < mask.shape[1]:
            feed = {name: self._cut(name, array, length) for name, array in feed.items()}
        fixed = self.inner.fixed_inputs
        return self.inner._infer({**feed, **fixed} if fixed else feed)  # the outer call checked the inputs once

    def _cut(self, name: str, array: np.ndarray, length: int) -> np.ndarray:
        axis = self._seq_axes.get(name)
        if axis is None:
            return array
        index = [slice(None)] * array.ndim
        index[axis] = slice(0, length)
        return np.ascontiguousarray(array[tuple(index)])

    def describe(self) -> dict:
        return {**self.inner.describe(), "trim_padding": True}


def wants_trimming(metadata: dict | None) -> bool:
    """Whether the artifact asks to be served with padding trimmed ({"serving": {"trim_padding": true}})."""
    return bool(((metadata or {}).get("serving") or {}).get("trim_padding"))
