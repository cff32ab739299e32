"""A pickle that is not a zip archive: the legacy torch.save format, or a raw pickle.

The weights-only unpickler is safe for both and is tried first, so a legacy checkpoint of plain
tensors loads without the opt-in; anything that needs more is refused unless trust_pickle is given.
"""
from __future__ import annotations

import pickle
import pickletools

from aiopt.artifacts.base import LoadedModel
from aiopt.artifacts.checkpoint import from_torch_payload
from aiopt.artifacts.pickles import TRUST_HINT, trusted_module, trusted_unpickle
from aiopt.artifacts.probe import Probe
from aiopt.errors import InputError, UnsafeFileError, first_line


def sniff(probe: Probe) -> bool:
    return probe.is_pickle


def load(probe: Probe, trust_pickle: bool = False, verify_integrity: bool = True) -> LoadedModel:
    import torch

    path = probe.path
    try:  # parse (never execute) the first pickle, so garbage is reported as garbage
        with open(path, "rb") as fh:
            for _ in pickletools.genops(fh):
                pass
    except Exception as exc:
        raise InputError(f"{path} is not a valid checkpoint (a damaged pickle: {first_line(exc)}); re-create or re-copy it") from exc
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            raise UnsafeFileError(
                f"{path} is a pickle that needs more than tensors to load ({first_line(exc)[:120]}); loading it would run code from "
                f"the file, so it was not loaded; {TRUST_HINT}"
            ) from exc
        return trusted_module(path, trusted_unpickle(path))
    except Exception as exc:
        if trust_pickle:
            return trusted_module(path, trusted_unpickle(path))
        raise InputError(f"{path} is not a valid checkpoint ({first_line(exc)}); re-create or re-copy it") from exc
    return from_torch_payload(path, payload)
