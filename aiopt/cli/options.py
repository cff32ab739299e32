"""Options several commands share, and the options of a step's config, generated from their one
declaration on the config field (aiopt.options) so that flag, default and help cannot drift."""
from __future__ import annotations

import dataclasses
from typing import Any

import typer

from aiopt.errors import InputError
from aiopt.options import command_default
from aiopt.specs import parse_input_shapes
from aiopt.steps import get_step

TRUST_HELP = "Allow loading pickled Python objects. Unpickling runs code from the file: only for files you trust."
INPUT_SHAPE_HELP = "Input shape for a model without metadata, batch first; names are dynamic axes: 1x40, batchx64, or name:1x40 / input_ids:batchxseq per input (repeatable)."
INPUT_DTYPE_HELP = "Input dtype(s) matching --input-shape (default float32)."
JSON_OPTION = typer.Option(False, "--json", help="Print one JSON document with the results on stdout (messages go to stderr).")
TRUST_PICKLE_OPTION = typer.Option(False, "--trust-pickle", help=TRUST_HELP)
FORCE_OPTION = typer.Option(False, "--force", help="Replace the output if it exists.")
DEVICE_OPTION = typer.Option("cpu", "--device", help="cpu or cuda (no GPU: exit 4).")
SEED_OPTION = typer.Option(0, "--seed", help="Random seed.")
INPUT_SHAPE_OPTION = typer.Option(None, "--input-shape", help=INPUT_SHAPE_HELP)
INPUT_DTYPE_OPTION = typer.Option(None, "--input-dtype", help=INPUT_DTYPE_HELP)
SEQ_LEN_OPTION = typer.Option(128, "--seq-len", help="Tokens per sample for .txt data (one text per line, tokenized by the model folder's tokenizer), and for sequence axes without data.")


def step_option(step: str, name: str, **settings: Any) -> Any:
    """The typer option of config field `name` of `step`, as declared on the field."""
    found = get_step(step)
    declared = found.options[name]
    return typer.Option(command_default(found.config_class, name, declared), *declared.flags, help=declared.help, **settings)


def config_of(step: str, values: dict[str, Any], **overrides: Any) -> Any:
    """The step's frozen config from a command's parameters, named as its fields (a command's
    `locals()`): a list becomes a tuple, and an option not given (None) takes the field's default."""
    config_class = get_step(step).config_class
    settings = {}
    for field in dataclasses.fields(config_class):
        if field.name in values:
            value = values[field.name]
            settings[field.name] = tuple(value) if isinstance(value, list) else value
            if value is None and field.default is not None:
                del settings[field.name]
    return config_class(**{**settings, **overrides})


def input_spec(shapes: list[str] | None, dtypes: list[str] | None):
    if dtypes and not shapes:
        raise InputError("--input-dtype needs --input-shape as well (e.g. --input-shape 1x40 --input-dtype float32)")
    if not shapes:
        return None
    return parse_input_shapes(shapes, dtypes or [])
