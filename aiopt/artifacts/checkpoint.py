"""The aiopt checkpoint: a torch zip archive holding {"aiopt_format", "format_version", "metadata"
(JSON text), "state_dict"}. It loads with torch.load(weights_only=True) and the model is rebuilt
from its architecture's registered builder; a torch archive that pickles anything more (a whole
nn.Module) loads only with the trust_pickle opt-in.

The module is rebuilt by the builder its architecture registered (aiopt.architectures):
aiopt.reference_models registers its own when imported, and `import aiopt` imports it, so every
entry point can rebuild them while this package never imports a model family."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from aiopt.architectures import builder_for, registered_architectures
from aiopt.artifacts.base import FORMAT_AIOPT, LoadedModel
from aiopt.artifacts.checks import check_artifact_metadata
from aiopt.artifacts.lineage import with_own_lineage
from aiopt.artifacts.pickles import TRUST_HINT, trusted_module, trusted_unpickle, unsafe_globals
from aiopt.artifacts.probe import Probe
from aiopt.errors import InputError, UnsafeFileError, first_line
from aiopt.fileio import atomic_path, write_with
from aiopt.specs import specs_from_json

CHECKPOINT_FORMAT = "aiopt-checkpoint"
CHECKPOINT_VERSION = 1

def save_checkpoint(model, metadata: dict, path: str | os.PathLike) -> Path:
    """Write an aiopt checkpoint atomically. `metadata` must be JSON-able (checked here)."""
    import torch

    path = Path(path)
    metadata = with_own_lineage({**metadata, "format": FORMAT_AIOPT}, path)
    payload = {
        "aiopt_format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "metadata": json.dumps(metadata),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        write_with(tmp, lambda fh: torch.save(payload, fh))
    return path


def sniff(probe: Probe) -> bool:
    """A torch zip archive with a pickle: an aiopt checkpoint, a bare state_dict or a pickled module."""
    return "data.pkl" in probe.members


def load(probe: Probe, trust_pickle: bool = False, verify_integrity: bool = True) -> LoadedModel:
    import torch

    path = probe.path
    unsafe = unsafe_globals(str(path))
    if unsafe:
        if not trust_pickle:
            raise UnsafeFileError(
                f"{path} is a pickled Python object (it references {', '.join(unsafe[:3])}{'...' if len(unsafe) > 3 else ''}); "
                f"loading it would run code from the file, so it was not loaded; {TRUST_HINT}"
            )
        return trusted_module(path, trusted_unpickle(path))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{path} is not a valid checkpoint ({first_line(exc)}); re-create or re-copy it") from exc
    return from_torch_payload(path, payload)


def from_torch_payload(path: Path, payload: Any) -> LoadedModel:
    """What torch.load(weights_only=True) gave: an aiopt checkpoint, or an InputError saying what it is instead."""
    import torch

    if isinstance(payload, dict) and payload.get("aiopt_format") == CHECKPOINT_FORMAT:
        return _from_checkpoint(path, payload)
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise InputError(
            f"{path} holds a bare state_dict without its architecture; load it into your model and save it with "
            "aiopt.save_checkpoint, or export it to TorchScript/torch.export/ONNX"
        )
    raise InputError(f"{path} is a PyTorch file but not an aiopt checkpoint or a model (it holds a {type(payload).__name__})")


def _build(name: Any, config: Any):
    build = builder_for(str(name))
    if build is None:
        raise InputError(f"unknown model {name!r}; known models: {', '.join(registered_architectures()) or 'none registered'} "
                         "(a checkpoint names its architecture; was it written by a newer aiopt?)")
    return build(name, config)


def _from_checkpoint(path: Path, payload: dict) -> LoadedModel:
    version = payload.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise InputError(f"{path} is an aiopt checkpoint of format version {version}; this aiopt reads up to {CHECKPOINT_VERSION}: upgrade aiopt")
    try:
        metadata = json.loads(payload["metadata"])
        model = _build(metadata["architecture"], metadata["config"])
        model.load_state_dict(payload["state_dict"])
    except InputError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"{path} is a damaged aiopt checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc
    model.eval()
    check_artifact_metadata(metadata, path)  # the same checks as every other format's metadata
    return LoadedModel(path, FORMAT_AIOPT, model, metadata, specs_from_json(metadata.get("inputs")))
