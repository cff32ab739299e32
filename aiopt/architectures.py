"""The architectures an aiopt checkpoint can name, each with the builder that rebuilds its module.

A checkpoint is config + state_dict, never a pickled module (design.md): the checkpoint format
(artifacts/checkpoint.py) rebuilds the module through this registry. Model families register here
(aiopt.reference_models does when imported, and `import aiopt` imports it), so the artifact formats
never import a model family. It imports nothing, so registering at `import aiopt` costs nothing.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

# architecture name (as a checkpoint's metadata records it) -> build(name, config) -> nn.Module
_BUILDERS: dict[str, Callable[[str, Any], Any]] = {}


def register_architectures(names: Iterable[str], build: Callable[[str, Any], Any]) -> None:
    """Let checkpoints of these architectures load: `build(name, config)` makes the module their
    state_dict is loaded into (config as stored in the metadata: a dict)."""
    for name in names:
        _BUILDERS[name] = build


def registered_architectures() -> tuple[str, ...]:
    return tuple(_BUILDERS)


def builder_for(name: str) -> Callable[[str, Any], Any] | None:
    """The builder of `name` (a size suffix such as cnn:tiny ignored); None when none registered it."""
    return _BUILDERS.get(name.partition(":")[0])
