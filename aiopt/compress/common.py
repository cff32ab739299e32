"""Glue every compression step shares: which model it works on and which data it trains on.
Measuring a result (outputs, agreement with the parent, MACs) lives in aiopt.measure."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from aiopt.artifacts import FORMAT_AIOPT, load_model
from aiopt.data import DATASETS, load_dataset
from aiopt.errors import InputError, UnsupportedModelError

@dataclass
class ReferenceCheckpoint:
    """An aiopt checkpoint of a registry architecture: what pruning and distillation need."""

    loaded: Any  # artifacts.LoadedModel
    architecture: str
    config: Any  # the architecture's frozen config dataclass

    @property
    def model(self):
        return self.loaded.model


def load_reference_checkpoint(path: str | os.PathLike, step: str) -> ReferenceCheckpoint:
    """Load `path` and require an aiopt checkpoint whose architecture the registry can rebuild."""
    loaded = load_model(path)
    if loaded.format != FORMAT_AIOPT:
        raise UnsupportedModelError(
            f"{step} needs an aiopt checkpoint (.pt written by aiopt train/prune/distill); {path} is {loaded.format}"
        )
    # The registry rebuilt the model from the metadata's config; the model keeps that config object.
    return ReferenceCheckpoint(loaded, loaded.metadata["architecture"], loaded.model.config)


def dataset_for(metadata: dict, override: str | None = None, step: str = "this step"):
    """The built-in dataset a model was trained on (or `override`), for fine-tuning and evaluation."""
    name = override or (metadata.get("dataset") or {}).get("name")
    if name not in DATASETS:
        raise InputError(f"{step} needs training data: the model records no built-in dataset; pass --dataset ({'|'.join(DATASETS)})")
    dataset = load_dataset(name)
    recorded = (metadata.get("dataset") or {}).get("sample_shape")
    if recorded and tuple(recorded) != dataset.sample_shape:
        raise InputError(f"dataset {name} has samples of shape {dataset.sample_shape}; the model was trained on {tuple(recorded)}")
    return dataset
