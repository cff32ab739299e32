"""aiopt: make neural networks smaller and faster, and prove it.

Kept lean on purpose: `import aiopt` loads neither torch nor onnxruntime; the public
functions below import what they need when first used.
"""
from __future__ import annotations

import importlib
from typing import Any

from aiopt.version import __version__

__all__ = ["__version__", "load_model", "save_checkpoint", "inspect_artifact", "train_reference_model", "AioptError"]

_LAZY = {
    "load_model": "aiopt.artifacts",
    "save_checkpoint": "aiopt.artifacts",
    "inspect_artifact": "aiopt.inspect",
    "train_reference_model": "aiopt.reference_models.train",
    "AioptError": "aiopt.errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'aiopt' has no attribute {name!r}")


# The reference models register their builder with aiopt.architectures when imported: imported
# here, every entry point (CLI, `python -m aiopt`, `from aiopt.artifacts import load_model`) can
# rebuild an aiopt checkpoint. It imports only aiopt.errors and aiopt.architectures (lean import).
from aiopt import reference_models  # noqa: E402,F401
