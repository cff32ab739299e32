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
from aiopt.options import command_default, declared_options
from aiopt.specs import parse_input_shapes
from aiopt.steps import get_step

TRUST_HELP = "Allow loading pickled Python objects. Unpickling runs code from the file: only for files you trust."
INPUT_SHAPE_HELP = "Input shape for a model without metadata, batch first; names are dynamic axes: 1x40, batchx64, or name:1x40 / input_ids:batchxseq per input (repeatable)."
INPUT_DTYPE_HELP = "Input dtype(s) matching --input-shape (default float32)."
JSON_OPTION = typer.Option(False, "--json", help="Print one JSON document with the results on stdout (messages go to stderr).")
TRUST_PICKLE_OPTION = typer.Option(False, "--trust-pickle", help=TRUST_HELP)
FORCE_OPTION = typer.Option(False, "--force", help="Replace the output if it exists.")
INPUT_SHAPE_OPTION = typer.Option(None, "--input-shape", help=INPUT_SHAPE_HELP)
INPUT_DTYPE_OPTION = typer.Option(None, "--input-dtype", help=INPUT_DTYPE_HELP)


def step_options(*steps: str) -> Callable:
    """Give a command the options of its steps' configs (config_options); a field two steps share
    (export's precision) is one option, declared by the first step named."""
    return config_options(*(get_step(name).config_class for name in steps))


def config_options(*config_classes: type) -> Callable:
    """Give a command the options of these configs, generated from their one declaration on the
    config fields: typer reads them from the signature set here (after the command's arguments and
    required options), and the command receives them in `**options`, named as the fields."""

    def decorate(function: Callable) -> Callable:
        signature = inspect.signature(function)
        own = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        added: dict[str, inspect.Parameter] = {}
        for config_class in config_classes:
            hints = typing.get_type_hints(config_class)
            for field, declared in declared_options(config_class).items():
                if field not in added and field not in signature.parameters:
                    default = command_default(config_class, field, declared)
                    option = typer.Option(default, *declared.flags, help=declared.help, envvar=declared.envvar)
                    kind = (str if default is not None else Optional[str]) if declared.parse else _cli_type(hints[field])
                    added[field] = inspect.Parameter(field, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=option, annotation=kind)
        # the command's arguments and required options lead (--help lists them first), then the generated ones
        leading = [p for p in own if isinstance(p.default, ArgumentInfo) or getattr(p.default, "default", None) is ...]
        function.__signature__ = signature.replace(parameters=[*leading, *added.values(), *(p for p in own if p not in leading)])
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
    """The step's frozen config from a command's parameters (config_from)."""
    return config_from(get_step(step).config_class, values, **overrides)


def config_from(config_class: type, values: dict[str, Any], **overrides: Any) -> Any:
    """A frozen config from a command's parameters, named as its fields (a command's `locals()` or
    `**options`): a list becomes a tuple, a flag's text is parsed where its field declares how, and
    an option not given (None, or no value of a repeatable one) takes the field's default."""
    declared = declared_options(config_class)
    settings = {}
    for field in dataclasses.fields(config_class):
        value = values.get(field.name)
        if field.name in overrides or value is None or value == [] or value == ():
            continue
        option = declared.get(field.name)
        if option is not None and option.parse is not None and isinstance(value, str):
            value = option.parse(value, option.flags[0])
        settings[field.name] = tuple(value) if isinstance(value, list) else value
    return config_class(**{**settings, **overrides})


def input_spec(shapes: list[str] | None, dtypes: list[str] | None):
    if dtypes and not shapes:
        raise InputError("--input-dtype needs --input-shape as well (e.g. --input-shape 1x40 --input-dtype float32)")
    if not shapes:
        return None
    return parse_input_shapes(shapes, dtypes or [])
