"""A study journal cut short (a crash or a full disk mid-write) is repaired before Optuna reads it.

Optuna's journal is one JSON record per line, appended. A write cut short leaves a last line
without its newline (or not valid JSON); Optuna skips it on reading, but its next append lands on
that partial line and every later read fails. Here the incomplete last record is dropped (it
belonged to an operation that never finished), the original is kept beside the journal as a
backup, and one warning line names it; every complete record, and so every complete trial, stays.
A line damaged in the middle of the file (records after it depend on it) is refused in one line.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from aiopt.errors import InputError
from aiopt.fileio import write_bytes_atomic

_RECORD_START = b'{"op_code"'  # how Optuna writes every record (json.dumps with compact separators)


def repair_journal(path: str | os.PathLike, warn=None) -> Path | None:
    """Repair the journal at `path` if its end is torn; return the backup's path (None when the
    journal is whole or absent). Holds Optuna's own journal lock meanwhile, so a writer sharing the
    file never sees half a repair, nor is its record in flight taken for a torn one."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    from optuna.storages.journal import JournalFileSymlinkLock

    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()
        repaired, dropped = _complete_records(data, path)
        if repaired == data:
            return None
        backup = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.bak")
        shutil.copy2(path, backup)
        write_bytes_atomic(path, repaired)
    finally:
        lock.release()
    what = f"an incomplete record ({dropped} bytes, a write cut short); it was dropped" if dropped else "a record without its newline; it was ended"
    message = f"warning: {path} ended in {what} and the study resumes with every complete trial; the original is kept as {backup}"
    (warn or (lambda text: print(text, file=sys.stderr)))(message)
    return backup


def _complete_records(data: bytes, path: Path) -> tuple[bytes, int]:
    """(the journal with its torn tail removed, how many bytes were dropped)."""
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: empty when the last record is complete
    if tail and _is_record(tail):  # whole, only its newline is missing
        return _complete_records(data + b"\n", path)
    kept = len(data) - len(tail)
    # a last line that ends with its newline but is not a whole record (a flush that stopped early)
    while lines and not _is_record(lines[-1]):
        if not lines[-1].strip():
            lines.pop()
            kept -= 1
            continue
        kept -= len(lines.pop()) + 1
        break
    for number, line in enumerate(lines, start=1):
        if line.strip() and not _is_record(line):
            raise InputError(f"{path}: line {number} is not a journal record (the file was damaged in the middle, not at its end); "
                             f"restore it from a backup, or start a new study with another -o")
    return data[:kept], len(data) - kept


def _is_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False
