"""Options several commands share, and the options of a step's config, generated from their one
declaration on the config field (aiopt.options) so that flag, default and help cannot drift."""
from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, List, Optional

import typer
from typer.models import ArgumentInfo

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


def step_options(*steps: str) -> Callable:
    """Give a command the options of its steps' configs, generated from their one declaration on the
    config fields: typer reads them from the signature set here (after the command's arguments),
    and the command receives them in `**options`, named as the fields. A field two steps share
    (export's precision) is one option, declared by the first step named."""

    def decorate(function: Callable) -> Callable:
        signature = inspect.signature(function)
        own = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        added: dict[str, inspect.Parameter] = {}
        for name in steps:
            step = get_step(name)
            hints = typing.get_type_hints(step.config_class)
            for field, declared in step.options.items():
                if field not in added and field not in signature.parameters:
                    option = typer.Option(command_default(step.config_class, field, declared), *declared.flags, help=declared.help)
                    added[field] = inspect.Parameter(field, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=option, annotation=_cli_type(hints[field]))
        arguments = [p for p in own if isinstance(p.default, ArgumentInfo)]
        function.__signature__ = signature.replace(parameters=[*arguments, *added.values(), *(p for p in own if p not in arguments)])
        return function

    return decorate


def _cli_type(hint: Any) -> Any:
    """The type typer parses a field's flag as: a tuple field is a repeatable option (a list)."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    kinds = [k for k in typing.get_args(hint) if k is not type(None)] if union else [hint]
    repeated = [k for k in kinds if typing.get_origin(k) is tuple]
    if repeated:
        return Optional[List[typing.get_args(repeated[0])[0]]]
    return Optional[kinds[0]] if union else hint


def config_of(step: str, values: dict[str, Any], **overrides: Any) -> Any:
    """The step's frozen config from a command's parameters, named as its fields (a command's
    `locals()`): a list becomes a tuple, and an option not given (None, or no value of a repeatable
    one) takes the field's default."""
    config_class = get_step(step).config_class
    settings = {}
    for field in dataclasses.fields(config_class):
        value = values.get(field.name)
        if value is not None and value != [] and value != ():
            settings[field.name] = tuple(value) if isinstance(value, list) else value
    return config_class(**{**settings, **overrides})


def input_spec(shapes: list[str] | None, dtypes: list[str] | None):
    if dtypes and not shapes:
        raise InputError("--input-dtype needs --input-shape as well (e.g. --input-shape 1x40 --input-dtype float32)")
    if not shapes:
        return None
    return parse_input_shapes(shapes, dtypes or [])
