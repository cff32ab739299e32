"""Atomic writes and output-path checks shared by every command that writes a file."""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from aiopt.errors import InputError


def check_output_path(output: str | os.PathLike, *inputs: str | os.PathLike | None, force: bool = False) -> Path:
    """Validate an output path before any work is done, so a bad `-o` fails fast.

    Refuses the input itself (even with force), a missing folder, and an existing file
    unless `force`.
    """
    out = Path(output)
    if out.is_dir():
        raise InputError(f"output {out} is a folder; pass a file path such as {out / 'model.pt'}")
    if not out.parent.exists():
        raise InputError(f"output folder {out.parent} does not exist; create it first or choose another -o")
    for src in inputs:
        if src is not None and out.exists() and Path(src).exists() and out.resolve() == Path(src).resolve():
            raise InputError(f"output {out} is the input file; choose another -o so the input is kept")
    if out.exists() and not force:
        raise InputError(f"output {out} already exists; pass --force to replace it or choose another -o")
    return out


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto `target` only on success.

    Same folder so the rename is atomic (same filesystem); on any error, including
    KeyboardInterrupt, the temporary file is removed and `target` is untouched.
    """
    target = Path(target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600 files; give the artifact the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())  # the rename must not publish a file whose data is still in flight
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
