"""An option is declared once, on its config field: flag(s), help text and default.

`option(default, "--flag", "help")` is a `dataclasses.field` whose metadata holds an `Option`.
The CLI builds its typer options from it (aiopt.cli.options: the steps' commands and `aiopt
optimize`, whose OptimizeConfig declares its flags the same way) and the step registry writes the
reproduce.sh flags from it (aiopt.steps), so the three can no longer disagree.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SAME = object()  # the command's default is the field's default
# help text of --seq-len, which several commands share
DEVICE_HELP = "cpu or cuda (no GPU: exit 4)."  # help text of --device, which several commands share
SEQ_LEN_HELP = "Tokens per sample for .txt data (one text per line, tokenized by the model folder's tokenizer), and for sequence axes without data."


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]  # e.g. ("--batch-size", "-b") or ("--per-channel/--per-tensor",)
    help: str
    cli_default: Any = SAME  # where the command defaults differently (None: "not given", resolved by the command)
    always: bool = False  # written to a reproduce command even at the config's default (the command's default differs)
    envvar: str | None = None  # read from this environment variable when the flag is absent (a secret kept off the command line)
    # the flag takes text that this turns into the field's value, called as parse(text, flag): "5m" -> 300.0 seconds
    parse: Callable[[str, str], Any] | None = None

    @property
    def written(self) -> str:
        """The form a reproduce command writes: the last flag (the short one when there is one)."""
        return self.flags[-1]


def option(default: Any, flags: str | tuple[str, ...], help: str, **settings: Any) -> Any:
    """A dataclass field with its default and the command-line option that sets it."""
    declared = Option(flags if isinstance(flags, tuple) else (flags,), help, **settings)
    return dataclasses.field(default=default, metadata={"option": declared})


def declared_options(config_class: type) -> dict[str, Option]:
    """Field name -> Option for every field of `config_class` that has a flag, in the dataclass's order."""
    return {f.name: f.metadata["option"] for f in dataclasses.fields(config_class) if "option" in f.metadata}


def field_default(config_class: type, name: str) -> Any:
    field = {f.name: f for f in dataclasses.fields(config_class)}[name]
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def command_default(config_class: type, name: str, declared: Option) -> Any:
    """What the command line gives the field when its flag is absent."""
    return field_default(config_class, name) if declared.cli_default is SAME else declared.cli_default
