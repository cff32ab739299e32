"""Pickles run code when they load: finding what a torch file would unpickle beyond tensors, and the
full unpickle that only the user's explicit opt-in (trust_pickle=True, --trust-pickle) reaches."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from aiopt.artifacts.base import FORMAT_PICKLE, LoadedModel
from aiopt.errors import InputError, first_line

TRUST_HINT = "pass --trust-pickle (API: trust_pickle=True) only if you trust whoever made the file"


def unsafe_globals(source) -> list[str]:
    """The globals a torch archive's pickle names beyond what weights-only loading allows."""
    import torch

    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(source))
    except Exception as exc:  # a damaged archive: report it as such
        raise InputError(f"not a valid checkpoint: cannot read its pickle ({exc}); re-create or re-copy it") from exc


def trusted_unpickle(path: Path) -> Any:
    """Only reached with trust_pickle=True: a full unpickle, which runs the file's code."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception:
        try:
            with open(path, "rb") as fh:
                return pickle.load(fh)
        except Exception as exc:
            raise InputError(f"{path} is not a valid pickle or checkpoint ({first_line(exc)}); re-create or re-copy it") from exc


def trusted_module(path: Path, obj: Any) -> LoadedModel:
    from torch import nn

    if not isinstance(obj, nn.Module):
        raise InputError(f"{path} was unpickled (trusted) but holds a {type(obj).__name__}, not a torch.nn.Module")
    obj.eval()
    return LoadedModel(path, FORMAT_PICKLE, obj, {}, [])
