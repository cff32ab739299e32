"""What every step shares: the hooks a caller passes in, and the typed result a step returns."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class StepHooks:
    """What the caller allows and how it watches: `force` (replace an existing output; optimize
    writes into its own folders), loading options, and progress callbacks."""

    say: Callable[[str], None] = lambda message: None
    # prune: on_epoch(stats); distill: on_epoch(phase, stats); without it, a line per epoch to `say`
    on_epoch: Callable | None = None
    force: bool = True
    trust_pickle: bool = False
    input_spec: list | None = None


def key(name: str):
    """A typed field read from the document under another name (deploy's path is its "repository")."""
    return field(metadata={"key": name})


@dataclass(frozen=True)
class StepResult:
    """A step's result: typed fields for what callers read, and `document`, the whole record as
    the step wrote it (the command's --json output, keys in their order; nested parts stay dicts).
    Built only by `from_dict`, so the fields always agree with the document."""

    path: str
    document: dict = field(repr=False)

    def to_dict(self) -> dict:
        return dict(self.document)

    @classmethod
    def from_dict(cls, document: dict) -> StepResult:
        typed = {f.name: document.get(f.metadata.get("key", f.name)) for f in dataclasses.fields(cls) if f.name != "document"}
        return cls(**typed, document=dict(document))
