"""A torch.export program (.pt2), with aiopt's metadata in the extra file `aiopt.json`.

torch.export.load can unpickle (a legacy layout, payload configs with use_pickle) or load native
code (AOTInductor): such parts are found in the archive before loading and refused without the
trust_pickle opt-in, and while it loads every torch.load inside it is held to weights only.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import zipfile
from pathlib import Path

from aiopt.artifacts.base import FORMAT_EXPORT, METADATA_KEY, LoadedModel, parse_metadata
from aiopt.artifacts.pickles import TRUST_HINT, unsafe_globals
from aiopt.artifacts.probe import Probe
from aiopt.errors import InputError, UnsafeFileError, first_line
from aiopt.specs import TensorSpec, specs_from_json


def sniff(probe: Probe) -> bool:
    return "archive_format" in probe.members or any(m.startswith("models/") and m.endswith(".json") for m in probe.members)


def _export_pickled_members(path: Path, members: list[str]) -> list[str]:
    """Members of a .pt2 archive that torch.export.load would unpickle or run as native code."""
    lowered = [m.lower() for m in members]
    risky = [m for m, low in zip(members, lowered) if low.startswith("data/aotinductor/") or low.endswith((".so", ".dll", ".dylib"))]
    if "archive_format" not in lowered:
        risky.append("legacy .pt2 layout (pickled state dict)")
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            member = name.split("/", 1)[1].lower()
            if member.startswith("data/") and member.endswith("_config.json"):
                risky += [f"{member}:{key}" for key in _pickled_config_entries(path, member, archive.read(name))]
            elif member.endswith(".pt") and unsafe_globals(io.BytesIO(archive.read(name))):
                risky.append(member)
    return risky


def _pickled_config_entries(path: Path, member: str, raw: bytes) -> list[str]:
    try:
        config = json.loads(raw or b"{}").get("config", {})
        entries = [(key, entry.get("use_pickle"), str(entry.get("path_name", ""))) for key, entry in config.items()]
    except (ValueError, AttributeError, TypeError) as exc:
        raise InputError(f"{path}: {member} is not a valid torch.export payload config ({exc}); re-create the file") from exc
    return [key for key, use_pickle, name in entries if use_pickle or not name.startswith(("weight_", "tensor_"))]


@contextlib.contextmanager
def _weights_only_everywhere():
    """Backstop while torch.export.load runs: any torch.load inside it may not fall back to pickle."""
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    loggers = [logging.getLogger(n) for n in ("torch.export", "torch._export", "torch._export.serde.serialize")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)  # torch logs tracebacks before raising; we report one line
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def load(probe: Probe, trust_pickle: bool = False, verify_integrity: bool = True) -> LoadedModel:
    import torch

    path = probe.path
    risky = _export_pickled_members(path, probe.members)
    if risky and not trust_pickle:
        raise UnsafeFileError(
            f"{path} is a torch.export program whose parts {', '.join(risky[:3])} would be unpickled or run as native code "
            f"on load, so it was not loaded; {TRUST_HINT}"
        )
    extra = {METADATA_KEY: ""}
    guard = contextlib.nullcontext() if trust_pickle else _weights_only_everywhere()
    try:
        with guard:
            program = torch.export.load(str(path), extra_files=extra)
    except Exception as exc:
        cause = exc.__cause__ or exc.__context__ or exc
        if "weights only load failed" in f"{exc} {cause}".lower():
            raise UnsafeFileError(f"{path} holds pickled objects that would run code on load, so it was not loaded; {TRUST_HINT}") from exc
        if "cuda" in f"{exc} {cause}".lower() and not torch.cuda.is_available():
            raise InputError(f"{path} holds CUDA tensors and this machine has no CUDA GPU ({first_line(cause)}); load it where there "
                             "is one, or re-export it with --device cpu") from exc
        raise InputError(f"{path} is not a valid torch.export program ({first_line(cause)}); re-create or re-copy it") from exc
    metadata = parse_metadata(extra.get(METADATA_KEY), path)
    spec = specs_from_json(metadata.get("inputs")) or _export_input_spec(program)
    loaded = LoadedModel(path, FORMAT_EXPORT, program.module(), metadata, spec)
    loaded.metadata.setdefault("params_count", sum(int(t.numel()) for t in program.state_dict.values()))
    return loaded


def _export_input_spec(program) -> list[TensorSpec]:
    """Input spec from the program's placeholders: symbolic sizes become named dims."""
    user_inputs = set(program.graph_signature.user_inputs)
    specs = []
    for node in program.graph.nodes:
        value = node.meta.get("val")
        if node.op != "placeholder" or node.name not in user_inputs or value is None or not hasattr(value, "shape"):
            continue
        shape = tuple(int(d) if isinstance(d, int) or str(d).isdigit() else ("batch" if i == 0 else f"dim{i}") for i, d in enumerate(value.shape))
        specs.append(TensorSpec(node.name, shape, str(value.dtype).removeprefix("torch.")))
    return specs
