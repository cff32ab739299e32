"""Atomic writes and output-path checks shared by every command that writes a file."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterator

from aiopt.errors import InputError

# Outputs that check_output_path found absent: they are published without replacing anything,
# so that a second process writing the same path meanwhile makes this one fail instead of mixing.
_FRESH_OUTPUTS: set[Path] = set()

# Write failures the user can fix (space, permissions), reported as bad input rather than a bug.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


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
    if out.exists():
        _FRESH_OUTPUTS.discard(out.resolve())
    else:
        _FRESH_OUTPUTS.add(out.resolve())
    return out


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; publish it as `target` only on success.

    Same folder so the rename is atomic (same filesystem); on any error, including
    KeyboardInterrupt, the temporary file is removed and `target` is untouched. A target that
    check_output_path found absent is published without replacing (a hard link), so of two
    processes writing it the second fails whole. Full disks and unwritable folders are an
    InputError (exit 2) that names the file.
    """
    target = Path(target)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise _write_error(target, exc) from exc
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
        _publish(tmp, target)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if is_write_error(exc):
            raise _write_error(target, exc) from exc
        raise


def is_write_error(exc: BaseException) -> bool:
    """A failure to write that the user can fix: no space, file too large, read-only or no permission."""
    return isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS


def _publish(tmp: Path, target: Path) -> None:
    resolved = target.resolve()
    if resolved not in _FRESH_OUTPUTS:
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)  # fails if target exists: never replaces what another process wrote
    except FileExistsError:
        raise InputError(
            f"output {target} appeared while this command ran (another process?); it was left as it is and "
            "this run's result was discarded; pass --force to replace it or choose another -o"
        ) from None
    except OSError:  # a filesystem without hard links: the narrower check-then-rename
        if target.exists():
            raise InputError(f"output {target} appeared while this command ran; pass --force to replace it") from None
        os.replace(tmp, target)
    else:
        tmp.unlink()
    _FRESH_OUTPUTS.discard(resolved)


def _write_error(target: Path, exc: OSError) -> InputError:
    return InputError(
        f"cannot write {target}: {exc.strerror or exc}; free disk space, make {target.parent} writable "
        "or choose another -o (nothing was written)"
    )


def write_with(path: str | os.PathLike, serialize: Callable[[IO[bytes]], None]) -> None:
    """Run `serialize(file)` on `path` opened for writing, surfacing the OSError behind a failure.

    torch.save and torch.jit.save write through C++, which turns a full disk into a RuntimeError
    ("unexpected pos ..."); the file object remembers the real error so it can be reported as one.
    """
    with open(path, "wb") as fh:
        recorder = _ErrorRecordingFile(fh)
        try:
            serialize(recorder)  # type: ignore[arg-type]
        except RuntimeError:
            if recorder.error is not None:
                raise recorder.error from None
            raise


class _ErrorRecordingFile(io.BufferedIOBase):
    """A writable file (an io object, as torch.export.save checks) that keeps its last OSError."""

    def __init__(self, fh: IO[bytes]):
        super().__init__()
        self._fh, self.error = fh, None

    def write(self, data) -> int:
        try:
            return self._fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._fh.seekable()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def flush(self) -> None:
        self._fh.flush()


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def human_size(size_bytes: int | None) -> str:
    """Bytes as a reader wants them in a table or a message: KiB below one MiB, MiB above; "-" when unknown."""
    if size_bytes is None:
        return "-"
    return f"{size_bytes / 1024:.1f} KiB" if size_bytes < 1 << 20 else f"{size_bytes / (1 << 20):.2f} MiB"
