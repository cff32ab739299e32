"""The format registry: load_model asks each format, in order, whether it recognises the content
(`sniff`), and the first that does loads it (`load`). Adding a format is one module with those two
functions and one entry here."""
from __future__ import annotations

import os
from typing import Protocol

from aiopt.artifacts import checkpoint, hf, onnx, torch_export, torch_pickle, torchscript
from aiopt.artifacts.base import LoadedModel
from aiopt.artifacts.checks import check_input_sizes
from aiopt.artifacts.probe import Probe, probe
from aiopt.artifacts.signature import merge_input_spec
from aiopt.errors import InputError
from aiopt.specs import TensorSpec


class ArtifactFormat(Protocol):
    def sniff(self, probe: Probe) -> bool: ...
    def load(self, probe: Probe, trust_pickle: bool = False, verify_integrity: bool = True) -> LoadedModel: ...


# In order: the zip-based formats by their members (a .pt2 first: it may also hold pickles), then
# pickles; ONNX takes every other file and says so when it does not parse.
FORMATS: tuple[ArtifactFormat, ...] = (hf, torch_export, torchscript, checkpoint, torch_pickle, onnx)


def load_model(
    path: str | os.PathLike,
    trust_pickle: bool = False,
    input_spec: list[TensorSpec] | None = None,
    verify_integrity: bool = True,
) -> LoadedModel:
    """Load any supported artifact. `input_spec` supplies the inputs of a model without metadata.
    An ONNX file aiopt wrote that was changed since is refused unless `verify_integrity` is False
    (inspect reports it instead)."""
    found = probe(path)
    form = next((f for f in FORMATS if f.sniff(found)), None)
    if form is None:
        raise InputError(f"{found.path} is a zip archive but not a PyTorch checkpoint, TorchScript or torch.export file")
    loaded = form.load(found, trust_pickle=trust_pickle, verify_integrity=verify_integrity)
    if input_spec:
        check_input_sizes(input_spec)
        loaded.input_spec = merge_input_spec(loaded, input_spec)
    return loaded
