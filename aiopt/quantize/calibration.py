"""Calibration and selection data for quantization.

Calibration samples come from the training split (never the test split the report is
measured on), or from a user `.npz`. Layer selection (`--max-accuracy-drop`) is scored on a
held-out slice of the training split that calibration did not see.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from aiopt.data import DATASETS, load_dataset, load_npz
from aiopt.errors import InputError
from aiopt.evaluate import EvalData, check_against_spec
from aiopt.specs import fed_by_data, fixed_batch, to_model_layout
from aiopt.text_data import is_text_file, load_texts, tokenizer_folder

SELECTION_SAMPLES = 1000


@dataclass(frozen=True)
class CalibrationSet:
    inputs: dict[str, np.ndarray]
    source: str
    selection: EvalData | None  # held-out labelled samples for layer selection, when known
    notes: tuple[str, ...] = ()  # what the user should know about the data (lines truncated, ...)

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))


def calibration_set(source: str | os.PathLike | None, input_spec, metadata: dict, samples: int = 256, seed: int = 0,
                    seq_len: int = 128) -> CalibrationSet | None:
    """Calibration inputs from `source` (a built-in dataset name, `.npz`, or `.txt` tokenized by the
    model's Hugging Face tokenizer at `seq_len`), else the model's own dataset; None when neither
    is known (the caller falls back to dynamic quantization)."""
    if samples < 1:
        raise InputError(f"--calib-samples must be at least 1, got {samples}")

    input_spec = fed_by_data(input_spec)  # fixed inputs come from the spec, not the data
    names = [s.name for s in input_spec]
    dataset_name = str(source) if source is not None and str(source) in DATASETS else None
    if source is None:
        dataset_name = (metadata.get("dataset") or {}).get("name")
        if dataset_name not in DATASETS:
            return None
    rng = np.random.default_rng(seed)
    if dataset_name is None:  # a user .npz or .txt
        inputs, notes = _user_inputs(source, input_spec, metadata, seq_len)
        _check_calibration(inputs, input_spec, str(source))
        order = rng.permutation(len(next(iter(inputs.values()))))
        chosen = order[:samples]
        return CalibrationSet({k: v[chosen] for k, v in inputs.items()}, str(source), None, notes)
    if len(names) != 1:
        raise InputError(f"the {dataset_name} dataset has one input; this model takes {len(names)} ({', '.join(names)}): pass --calibration FILE.npz")
    dataset = load_dataset(dataset_name)
    inputs = {names[0]: dataset.x_train}
    _check_calibration(inputs, input_spec, dataset_name)
    order = rng.permutation(len(dataset.y_train))
    held_out = order[-min(SELECTION_SAMPLES, len(order) // 4):]
    chosen = order[:min(samples, len(order) - len(held_out))]
    selection = EvalData({names[0]: dataset.x_train[held_out]}, dataset.y_train[held_out], f"{dataset_name}:train-held-out")
    return CalibrationSet({names[0]: dataset.x_train[chosen]}, f"{dataset_name}:train", selection)


def _user_inputs(source, input_spec, metadata: dict, seq_len: int) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    if is_text_file(source):
        inputs, notes = load_texts(source, tokenizer_folder(metadata, source), input_spec, seq_len)
        return inputs, tuple(notes)
    return load_npz(source, input_names=[s.name for s in input_spec], require_labels=False,
                    batch_axes={s.name: s.batch_axis for s in input_spec})[0], ()


def _check_calibration(inputs: dict[str, np.ndarray], input_spec, source: str) -> None:
    check_against_spec(inputs, input_spec, source)
    for spec in input_spec:
        if spec.value is not None:
            continue
        array = inputs[spec.name]
        if len(array) == 0:
            raise InputError(f"{source}: {spec.name!r} holds no samples; calibration needs at least one")
        if np.dtype(spec.dtype).kind != array.dtype.kind and not (array.dtype.kind in "iu" and np.dtype(spec.dtype).kind in "iu"):
            raise InputError(f"{source}: {spec.name!r} is {array.dtype}, the model takes {spec.dtype}; convert the array (e.g. x.astype('{spec.dtype}'))")


class OrtCalibrationReader:
    """Feeds calibration batches to ONNX Runtime's calibrator (its CalibrationDataReader protocol)."""

    def __init__(self, calibration: CalibrationSet, input_spec, batch_size: int = 32):
        fixed = fixed_batch(input_spec)
        # A static-batch model takes exactly its batch size: drop the incomplete last batch.
        self.batch_size, self.static_batch = (fixed, True) if fixed else (batch_size, False)
        self.calibration, self.input_spec = calibration, input_spec
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    # ORT's own tools iterate over readers too (qdq_loss_debug.collect_activations: `for feed in reader`)
    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.get_next()
        if batch is None:
            raise StopIteration
        return batch

    def rewind(self) -> None:
        total = len(self.calibration)
        end = total - total % self.batch_size if self.static_batch else total

        def batches():
            for start in range(0, end, self.batch_size):
                # fixed inputs stay in the batches ORT's calibrator feeds (it runs the graph as it is)
                fixed = {s.name: s.fixed_array() for s in self.input_spec if s.value is not None}
                yield {**{s.name: to_model_layout(self.calibration.inputs[s.name][start:start + self.batch_size], s).astype(s.dtype, copy=False)
                          for s in self.input_spec if s.value is None}, **fixed}

        self._batches = batches()
