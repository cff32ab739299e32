"""One error hierarchy for everything a user can cause.

The CLI turns these into a single line on stderr and the exit code below; the API
raises them unchanged so callers can catch one type.
"""
from __future__ import annotations


class AioptError(Exception):
    """Base class. `exit_code` is what the CLI exits with (see README, "Exit codes")."""

    exit_code = 3


class CheckFailedError(AioptError):
    """A check the user asked for failed: a regression, an accuracy budget."""

    exit_code = 1


class InputError(AioptError):
    """Bad usage or bad input: a missing file, a malformed shape, a bad data file."""

    exit_code = 2


class UnsafeFileError(InputError):
    """Loading the file would run code from it; refused unless the user opts in."""


class UnsupportedModelError(AioptError):
    """The model or result cannot be handled: an unsupported op, NaN outputs."""

    exit_code = 3


class MissingDependencyError(AioptError):
    """The backend or hardware asked for is absent (no CUDA, no TensorRT)."""

    exit_code = 4


def first_line(exc: BaseException) -> str:
    """An exception from a library, as one line of an aiopt error: its type and first non-empty line."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
