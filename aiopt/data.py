"""Datasets that need no download: MNIST-1D (generated), scikit-learn digits, user `.npz` files.

Every dataset yields float32 inputs already normalised and int64 labels. Inputs are
dicts keyed by input name, so multi-input models use the same path as ours.
"""
from __future__ import annotations

import os
import random
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from aiopt.errors import InputError, MissingDependencyError
from aiopt.fileio import atomic_path

# Bump when the preprocessing below changes, so stale caches are not reused.
_CACHE_VERSION = 1


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    info: dict = field(default_factory=dict)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def describe(self) -> dict:
        return {
            "name": self.name,
            "train_samples": int(len(self.y_train)),
            "test_samples": int(len(self.y_test)),
            "sample_shape": list(self.sample_shape),
            "num_classes": self.num_classes,
            **self.info,
        }


def cache_dir() -> Path:
    root = os.environ.get("AIOPT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "aiopt")
    path = Path(root)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the data cache folder {path} ({exc.strerror}); set AIOPT_CACHE_DIR to a writable folder") from exc
    return path


def _mnist1d() -> Dataset:
    cached = cache_dir() / f"mnist1d-v{_CACHE_VERSION}.npz"
    arrays = _read_cache(cached)
    if arrays is None:
        arrays = _generate_mnist1d()
        with atomic_path(cached) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
    return Dataset(
        name="mnist1d",
        x_train=arrays["x"].astype(np.float32),
        y_train=arrays["y"].astype(np.int64),
        x_test=arrays["x_test"].astype(np.float32),
        y_test=arrays["y_test"].astype(np.int64),
        num_classes=10,
        info={"source": "mnist1d.data.make_dataset(get_dataset_args())", "split": "4000 train / 1000 test (mnist1d default)"},
    )


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when absent or damaged (then they are generated again)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in ("x", "y", "x_test", "y_test")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def _generate_mnist1d() -> dict[str, np.ndarray]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:  # pragma: no cover - mnist1d is a core dependency
        raise MissingDependencyError("MNIST-1D needs the mnist1d package; run: pip install mnist1d") from exc
    # make_dataset reseeds the global numpy/random generators; keep the caller's streams intact.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {key: np.asarray(data[key]) for key in ("x", "y", "x_test", "y_test")}


def _digits() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target.astype(np.int64), test_size=0.25, stratify=digits.target, random_state=0
    )
    mean, std = float(x_train.mean()), float(x_train.std())
    return Dataset(
        name="digits",
        x_train=(x_train - mean) / std,
        y_train=y_train,
        x_test=(x_test - mean) / std,
        y_test=y_test,
        num_classes=10,
        info={
            "source": "sklearn.datasets.load_digits",
            "split": "stratified 75/25, random_state=0",
            "normalisation": {"scale": 1 / 16, "mean": mean, "std": std},
        },
    )


DATASETS: dict[str, Callable[[], Dataset]] = {"mnist1d": _mnist1d, "digits": _digits}


def load_dataset(name: str) -> Dataset:
    """A built-in dataset by name (`mnist1d`, `digits`) or a user `.npz` with x_train/... arrays."""
    if name in DATASETS:
        return DATASETS[name]()
    raise InputError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)} (or pass a .npz file where data is accepted)")


def load_npz(path: str | os.PathLike, input_names: Sequence[str] = ("x",), require_labels: bool = True,
             batch_axes: dict[str, int | None] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Read a user's data file: one array per input name plus `y` for labels.

    `batch_axes`: where each input has its batch (a state `2 x batch x 128`: 1); such arrays are
    matched by that axis and returned sample-first. Returns (inputs, labels). Never unpickles:
    object arrays are refused.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"data file {path} does not exist; pass an existing .npz file")
    if path.is_dir():
        raise InputError(f"data file {path} is a folder; pass an .npz file")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{path} is not a readable .npz file ({exc}); write it with numpy.savez") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputError(f"{path} holds a single array, not an .npz archive; write it with numpy.savez(path, x=..., y=...)")
    with archive:
        try:
            arrays = {key: archive[key] for key in archive.files}
        except ValueError as exc:
            reason = "an array holds Python objects, which would need pickle" if "pickle" in str(exc) else f"an array is damaged ({exc})"
            raise InputError(f"{path}: {reason}; save plain numeric arrays with numpy.savez") from exc
        except (OSError, EOFError, zipfile.BadZipFile) as exc:
            raise InputError(f"{path}: an array is damaged ({exc}); write the file again with numpy.savez") from exc
    missing = [n for n in input_names if n not in arrays]
    if missing and list(input_names) != ["x"] and len(input_names) == 1 and "x" in arrays:
        arrays[input_names[0]] = arrays.pop("x")  # a single-input model may always use `x`
        missing = []
    if missing:
        raise InputError(f"{path} has no array named {', '.join(missing)} (found: {', '.join(arrays) or 'none'}); save inputs under those names")
    if require_labels and "y" not in arrays:
        raise InputError(f"{path} has no labels array 'y' (found: {', '.join(arrays)}); add y=labels to measure accuracy")
    inputs = {name: arrays[name] for name in input_names}
    for name, axis in (batch_axes or {}).items():
        if axis and name in inputs and inputs[name].ndim > axis:  # held as the model takes it: samples on `axis`
            inputs[name] = np.moveaxis(inputs[name], axis, 0)
    labels = arrays.get("y")
    scalars = [n for n, a in {**inputs, "y": labels}.items() if a is not None and a.ndim == 0]
    if scalars:
        raise InputError(f"{path}: {', '.join(scalars)} is a single value, not one row per sample; save arrays with a sample axis, "
                         f"or give a fixed input its value with --input {scalars[0]}=VALUE")
    lengths = {name: len(a) for name, a in inputs.items()}
    if labels is not None:
        lengths["y"] = len(labels)
    if any(n == 0 for n in lengths.values()):
        raise InputError(f"{path} is empty ({lengths}); it needs at least one sample")
    if len(set(lengths.values())) > 1:
        raise InputError(f"{path}: arrays have different lengths {lengths} (samples counted on each input's batch axis); every array "
                         "needs one sample per row, or on the axis --input-shape names batch (e.g. state:2xbatchx128)")
    for name, array in {**inputs, **({"y": labels} if labels is not None else {})}.items():
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_) or np.issubdtype(array.dtype, np.complexfloating):
            raise InputError(f"{path}: array {name!r} has dtype {array.dtype}; use a real numeric dtype")
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise InputError(f"{path}: array {name!r} contains NaN or Inf values; clean the data first")
    if labels is not None:
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise InputError(f"{path}: 'y' must be a 1-D integer array of class labels, got {labels.dtype} {labels.shape}")
        labels = labels.astype(np.int64)
    return inputs, labels
