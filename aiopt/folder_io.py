"""Model folders as outputs: checked before any work, written whole or not at all."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from aiopt.errors import InputError

METADATA_FILE = "aiopt.json"  # aiopt's metadata beside a Hugging Face folder's own files


def check_output_folder(output: str | os.PathLike, *inputs: str | os.PathLike | None, force: bool = False) -> Path:
    """Refuse an input as the output, a missing parent, a file, and an existing folder unless `force`."""
    out = Path(output)
    if not out.parent.exists():
        raise InputError(f"output folder's parent {out.parent} does not exist; create it first or choose another -o")
    for src in inputs:
        if src is not None and out.exists() and Path(src).exists() and out.resolve() == Path(src).resolve():
            raise InputError(f"output {out} is the input; choose another -o so the input is kept")
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} is a file; a model folder is written here: choose another -o")
    if out.exists() and not force:
        raise InputError(f"output {out} already exists; pass --force to replace it or choose another -o")
    return out


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder beside `target`, renamed to it only when the block succeeds."""
    target = Path(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        for path in (tmp, *tmp.rglob("*")):  # mkdtemp makes 0700; give what a plain mkdir/open would
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_metadata(folder: Path) -> dict:
    """The aiopt.json beside an artifact, {} when it is missing or not JSON (the caller refuses in one line)."""
    try:
        found = json.loads((Path(folder) / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}
