"""The `aiopt` command line: parse flags, call a step or the API, render results. No logic lives here.

Results (tables, or one JSON document with --json) go to stdout; progress and messages go to
stderr. Errors end in one line and an exit code (README, "Exit codes"). The typer app and its
error handling are in `app`, output in `render`, shared and generated options in `options`; each
command group registers its commands on the app when imported below.
"""
# Imported in the order `aiopt --help` lists the commands.
from aiopt.cli import models, transforms, quantize, bench, optimize, generate  # noqa: F401,I001  registers the commands
from aiopt.cli.app import _state, app, main

__all__ = ["app", "main", "_state"]
