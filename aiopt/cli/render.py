"""How results reach a person or a program: tables and lines on stdout (or one JSON document
with --json), progress and messages on stderr. Without a terminal, tables are Markdown rows."""
from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

# Without a terminal (a pipe, a file, a CI log) rich would wrap at 80 columns and cut table
# values short ("art…"): there, lines run as long as they need and tables are Markdown rows.
PIPE_WIDTH = 10_000


def _console(to_stderr: bool = False) -> Console:
    console = Console(stderr=to_stderr, highlight=False)  # rich itself honours NO_COLOR
    if not console.is_terminal:
        console.width = PIPE_WIDTH
    return console


stdout = _console()
stderr = _console(to_stderr=True)


def emit_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")


def json_or_line(document: Any, as_json: bool, line: str) -> None:
    """The result as one JSON document (--json) or as one line for a person."""
    if as_json:
        emit_json(document)
    else:
        stdout.print(line)


class ResultTable(Table):
    """A rich Table on a terminal; anywhere else (a pipe, a file, a CI log) plain Markdown rows
    with every value whole and no padding, which grep, diff and a job summary all read."""

    def __rich_console__(self, console, options):
        if console.is_terminal:
            yield from super().__rich_console__(console, options)
            return

        def plain(cell) -> str:  # cells hold rich markup (escaped values); a line break would end the row
            return console.render_str(cell).plain.replace("\n", "; ") if isinstance(cell, str) else str(cell)

        header = [plain(column.header) for column in self.columns]
        rows = [[plain(cell) for cell in cells] for cells in zip(*(column.cells for column in self.columns))]
        widths = [max(map(len, values)) for values in zip(header, *rows)]
        right = [column.justify == "right" for column in self.columns]

        def line(values: list[str]) -> Text:
            return Text("| " + " | ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)) + " |")

        if self.title:
            yield Text(plain(self.title))
        yield line(header)
        yield Text("|" + "|".join("-" * (w + 1) + ":" if r else "-" * (w + 2) for w, r in zip(widths, right)) + "|")
        yield from (line(row) for row in rows)


def table(title: str, columns: tuple[str, ...], right: tuple[str, ...] = ()) -> Table:
    """A result table for a person, with these column headers (`right`: right-aligned ones);
    a value too wide for a terminal is folded onto the next line, never cut."""
    result = ResultTable(title=title)
    for column in columns:
        result.add_column(column or "field", justify="right" if column in right else "left", overflow="fold")  # a header is never blank
    return result


def say(message: str) -> None:
    """A step's progress line, on stderr (stdout carries the result)."""
    stderr.print(escape(message))


def notes(lines: list[str]) -> None:
    """What the user should know about their data (lines truncated, ...): stderr, beside progress."""
    for note in lines:
        stderr.print(f"note: {escape(note)}")


def spec_text(spec: dict) -> str:
    return f"{spec['name']}: {' x '.join(str(d) for d in spec['shape'])} {spec['dtype']}"


def progress(verb: str) -> Progress:
    """Progress of long work on stderr, gone once done: a bar per task with its status line."""
    return Progress(TextColumn(f"[bold]{verb}[/] {{task.description}}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                    TimeElapsedColumn(), console=stderr, transient=True, disable=not stderr.is_terminal)  # a log gets the messages, not bars


def epoch_bar(bars: Progress, description: str) -> Callable:
    """An on_epoch callback (train.EpochStats) that moves a new bar of `bars`."""
    task = bars.add_task(description, total=None, status="")

    def on_epoch(stats) -> None:
        bars.update(task, total=stats.epochs, completed=stats.epoch, status=f"loss {stats.loss:.3f} train acc {stats.train_accuracy:.3f}")

    return on_epoch
