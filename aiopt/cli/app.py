"""The typer app: the root options, and the one place where a command's failure becomes one
line on stderr and the documented exit code (README, "Exit codes")."""
from __future__ import annotations

import functools
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any, Optional

import typer
from rich.markup import escape

import aiopt
from aiopt.cli.render import stderr
from aiopt.errors import AioptError
from aiopt.redact import mask_secrets

app = typer.Typer(
    name="aiopt",
    help="Make neural networks smaller and faster, and prove it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

_state = {"debug": bool(os.environ.get("AIOPT_DEBUG")), "interrupted": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"aiopt {aiopt.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    max_model_memory: Optional[str] = typer.Option(None, "--max-model-memory", help="Most memory a Hugging Face model folder may need "
                                                   "(estimated from its config.json), e.g. 40GB; default: half the free memory."),
) -> None:
    """Make neural networks smaller and faster, and prove it.

    Every command reads an artifact and writes a new one; metadata and lineage travel with it.
    """
    _state["debug"] = _state["debug"] or debug
    if max_model_memory is not None:  # read where a folder is loaded (aiopt.artifacts.checks), by the API too
        os.environ["AIOPT_MAX_MODEL_MEMORY"] = max_model_memory
    signal.signal(signal.SIGINT, _remember_interrupt)


def _remember_interrupt(signum: int, frame: Any) -> None:
    """Ctrl-C as usual, remembered: torch.onnx.export, for one, catches the KeyboardInterrupt
    and raises its own "export failed" error, which must still end as an interruption."""
    _state["interrupted"] = True
    signal.default_int_handler(signum, frame)


def _interrupted() -> None:
    print("interrupted", file=sys.stderr)
    raise typer.Exit(130)


def fail(message: str, code: int) -> None:
    message = mask_secrets(message)  # a driver's error may quote the URL it was given, password and all
    if os.environ.get("NO_COLOR") or not stderr.is_terminal:
        print(f"error: {message}", file=sys.stderr)
    else:
        stderr.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def command(**settings: Any) -> Callable:
    """Register a command whose failures end in one line on stderr and the documented exit code."""

    def register(function: Callable) -> Callable:
        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except KeyboardInterrupt:
                _interrupted()
            except typer.Exit:
                raise
            except Exception as exc:
                if _state["interrupted"]:  # Ctrl-C that a library turned into its own error
                    _interrupted()
                if _state["debug"]:  # the traceback as well, never another exit code
                    traceback.print_exc()
                if isinstance(exc, AioptError):
                    fail(str(exc), exc.exit_code)
                # a bug or an unforeseen input: still one line unless --debug
                fail(f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", 3)

        return app.command(**settings)(run)

    return register


def main() -> None:
    app()
