"""Evaluation as a reusable function of (runner, data): accuracy and output agreement.

Used by export validation, `compare`, and (later) quantize/bench, so every number
about an artifact is measured on the artifact itself.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from aiopt.data import DATASETS, load_dataset, load_npz
from aiopt.errors import InputError
from aiopt.specs import fed_by_data, fixed_batch, to_model_layout
from aiopt.text_data import is_text_file, load_texts, tokenizer_folder


@dataclass(frozen=True)
class EvalData:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str
    notes: tuple[str, ...] = ()  # what the user should know about the data (lines truncated, ...)

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def batch(self, start: int, size: int) -> dict[str, np.ndarray]:
        return {k: v[start:start + size] for k, v in self.inputs.items()}


def eval_data(input_spec, metadata: dict | None = None, data: str | os.PathLike | None = None, require_labels: bool = False,
              seq_len: int = 128) -> EvalData:
    """Data to evaluate on: a user `.npz`, a `.txt` (one text per line, tokenized by the model's
    Hugging Face tokenizer at `seq_len`), else the test split of the dataset the model was trained on."""
    input_spec = fed_by_data(input_spec)  # fixed inputs (a sample rate) come from the spec, not the data
    names = [s.name for s in input_spec]
    if is_text_file(data):
        if require_labels:
            raise InputError(f"{data} is text without labels; accuracy needs a .npz with a y array")
        inputs, notes = load_texts(data, tokenizer_folder(metadata, data), input_spec, seq_len)
        return EvalData(inputs, None, str(data), tuple(notes))
    if data is not None and str(data) not in DATASETS:
        inputs, labels = load_npz(data, input_names=names, require_labels=require_labels, batch_axes={s.name: s.batch_axis for s in input_spec})
        check_against_spec(inputs, input_spec, str(data))
        return EvalData(inputs, labels, str(data))
    name = str(data) if data is not None else ((metadata or {}).get("dataset") or {}).get("name")
    if name not in DATASETS:
        raise InputError("no evaluation data: the model does not record a built-in dataset; pass --data FILE.npz (arrays per input name, plus y)")
    if len(names) != 1:
        raise InputError(f"the {name} dataset has one input; this model takes {len(names)} ({', '.join(names)}): pass --data FILE.npz")
    dataset = load_dataset(name)
    inputs = {names[0]: dataset.x_test}
    check_against_spec(inputs, input_spec, name)
    return EvalData(inputs, dataset.y_test, f"{name}:test")


def check_against_spec(inputs: dict[str, np.ndarray], input_spec, source: str) -> None:
    for spec in input_spec:
        if spec.value is not None:
            continue
        array = inputs[spec.name]
        expected = spec.sample_shape
        if array.ndim != len(spec.shape) or any(isinstance(d, int) and d != a for d, a in zip(expected, array.shape[1:])):
            raise InputError(f"{source}: {spec.name!r} has samples of shape {array.shape[1:]}; the model expects {expected}")
        if array.dtype.kind == "f" and _kind(spec.dtype) in "iub":  # casting would silently truncate, e.g. token ids
            raise InputError(f"{source}: {spec.name!r} is {array.dtype}, but the model takes {spec.dtype}; save it as integers "
                             f"(x.astype('{spec.dtype}'))")
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise InputError(f"{source}: {spec.name!r} contains NaN or Inf values; clean the data first")


def _kind(dtype: str) -> str:
    try:
        return np.dtype(dtype).kind
    except TypeError:  # bfloat16: no numpy equivalent, a float
        return "f"


def run_batches(runner, data: EvalData, batch_size: int = 256) -> list[np.ndarray]:
    """All outputs of `runner` over `data`, concatenated per output (on axis 0; an output whose
    batch sits elsewhere, a returned state, is concatenated on the axis of that input's batch)."""
    fixed = fixed_batch(runner.input_spec)
    if fixed:  # a static-batch model takes exactly its batch size
        batch_size = fixed
    elif getattr(runner, "batch_range", None):  # an engine profile or torch-cuda buckets: stay within them
        batch_size = min(batch_size, runner.batch_range[1])
    chunks: list[list[np.ndarray]] = []
    for start in range(0, len(data), batch_size):
        feed = {s.name: to_model_layout(data.inputs[s.name][start:start + batch_size], s).astype(s.dtype, copy=False) for s in runner.input_spec}
        outputs = list(runner(feed).values())
        chunks.append(outputs)
    axes = _output_batch_axes(runner, chunks[0], min(batch_size, len(data)))
    return [np.concatenate([c[i] for c in chunks], axis=axes[i]) if chunks[0][i].ndim else np.stack([c[i] for c in chunks])
            for i in range(len(chunks[0]))]


def _output_batch_axes(runner, first: list[np.ndarray], batch: int) -> list[int]:
    """Per output, the axis its batch sits on: 0, unless axis 0 does not hold the batch and an
    input with its batch elsewhere has the output's shape (a state returned as it came in)."""
    axes = []
    for array in first:
        axis = 0
        if array.ndim and array.shape[0] != batch:
            match = next((s for s in runner.input_spec if s.batch_axis and len(s.shape) == array.ndim and array.shape[s.batch_axis] == batch), None)
            axis = match.batch_axis if match else 0
        axes.append(axis)
    return axes


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    if labels.max(initial=0) >= logits.shape[-1] or labels.min(initial=0) < 0:
        raise InputError(f"labels range {labels.min()}..{labels.max()} does not fit the model's {logits.shape[-1]} outputs")
    return float((logits.argmax(-1) == labels).mean())


def agreement(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """How closely `candidate` reproduces `reference`: max abs/rel difference and top-1 agreement."""
    reference, candidate = reference.astype(np.float64), candidate.astype(np.float64)
    if reference.shape != candidate.shape:
        raise InputError(f"outputs have different shapes: {reference.shape} vs {candidate.shape}")
    diff = np.abs(reference - candidate)
    result = {
        "max_abs_diff": float(diff.max(initial=0.0)),
        "max_rel_diff": float((diff / np.maximum(np.abs(reference), 1e-6)).max(initial=0.0)),
        "finite": bool(np.isfinite(candidate).all()),
    }
    if reference.ndim >= 2:
        result["top1_agreement"] = float((reference.argmax(-1) == candidate.argmax(-1)).mean())
    return result
