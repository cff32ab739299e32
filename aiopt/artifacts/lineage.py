"""Where an artifact came from: the metadata a step writes (command, time, parent and its checksum)
and the lineage that travels from parent to child: trained -> pruned -> quantized -> exported."""
from __future__ import annotations

import datetime as _dt
import os
import sys
from pathlib import Path
from typing import Any

from aiopt.artifacts.base import LoadedModel
from aiopt.artifacts.files import artifact_sha256
from aiopt.redact import mask_argv
from aiopt.version import __version__

# What a derived artifact inherits from its parent; everything else describes the new step.
_INHERITED = ("architecture", "size", "config", "inputs", "outputs", "num_classes", "dataset", "params_count", "hf", "task", "quality_metric")


def command_line() -> str:
    """The command that is running, as a user would retype it, passwords and tokens masked (it is
    recorded in every artifact's metadata and in reports, which travel further than the shell)."""
    return " ".join(["aiopt" if Path(sys.argv[0]).stem in ("aiopt", "__main__", "cli") else Path(sys.argv[0]).name, *mask_argv(sys.argv[1:])])


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def lineage_entry(metadata: dict, path: str | os.PathLike) -> dict:
    """How an artifact appears in its descendants' lineage."""
    return {
        "step": metadata.get("step"),
        "artifact": str(path),
        "architecture": metadata.get("architecture"),
        "accuracy": (metadata.get("metrics") or {}).get("accuracy"),
        "created_at": metadata.get("created_at"),
    }


def parent_record(parent: LoadedModel) -> dict:
    return {"path": str(parent.path), "sha256": artifact_sha256(parent.path), "step": parent.metadata.get("step")}


def child_metadata(parent: LoadedModel, step: str, **fields: Any) -> dict:
    """Metadata for an artifact made from `parent` by `step` (export, quantize, ...)."""
    inherited = {k: parent.metadata[k] for k in _INHERITED if k in parent.metadata}
    lineage = list(parent.metadata.get("lineage") or [lineage_entry(parent.metadata or {"step": "import"}, parent.path)])
    return {
        "aiopt_version": __version__,
        **inherited,
        "step": step,
        "command": command_line(),
        "created_at": now_iso(),
        "parent": parent_record(parent),
        "lineage": lineage,
        **fields,
    }


def with_own_lineage(metadata: dict, path: str | os.PathLike) -> dict:
    """The metadata as stored at `path`: its lineage ends with the artifact itself."""
    lineage = list(metadata.get("lineage") or [])
    return {**metadata, "lineage": lineage + [lineage_entry(metadata, path)]}
