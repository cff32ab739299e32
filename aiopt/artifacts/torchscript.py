"""A TorchScript archive (torch.jit), with aiopt's metadata in the extra file `aiopt.json`."""
from __future__ import annotations

from aiopt.artifacts.base import FORMAT_TORCHSCRIPT, METADATA_KEY, LoadedModel, parse_metadata
from aiopt.artifacts.probe import Probe
from aiopt.errors import InputError
from aiopt.specs import specs_from_json


def sniff(probe: Probe) -> bool:
    return any(m.startswith("code/") for m in probe.members) or "constants.pkl" in probe.members


def load(probe: Probe, trust_pickle: bool = False, verify_integrity: bool = True) -> LoadedModel:
    import torch

    path = probe.path
    extra = {METADATA_KEY: ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:
        raise InputError(f"{path} is not a valid TorchScript file ({str(exc).splitlines()[0][:200]}); re-create or re-copy it") from exc
    module.eval()
    metadata = parse_metadata(extra.get(METADATA_KEY), path)
    return LoadedModel(path, FORMAT_TORCHSCRIPT, module, metadata, specs_from_json(metadata.get("inputs")))
