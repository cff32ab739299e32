"""What the format sniffers look at, read once per load: the path is there and not empty, its first
bytes, and for a zip archive its member names (every member's CRC checked, the layout one PyTorch
writes). Formats are told apart by content, never by the file's name."""
from __future__ import annotations

import functools
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from aiopt.errors import InputError, UnsafeFileError

ZIP_MAGIC = b"PK\x03\x04"  # torch reads archives by their leading magic, so do we
PICKLE_MAGIC = b"\x80"  # pickle protocol >= 2: a legacy torch.save file or a raw pickle


@dataclass
class Probe:
    path: Path
    head: bytes  # the first 4 bytes of a file; empty for a folder

    @property
    def is_dir(self) -> bool:
        return self.path.is_dir()

    @property
    def is_zip(self) -> bool:
        return self.head == ZIP_MAGIC

    @property
    def is_pickle(self) -> bool:
        return self.head[:1] == PICKLE_MAGIC

    @functools.cached_property
    def members(self) -> list[str]:
        """A zip archive's member names below its one top folder (torch names that folder as it
        likes); [] for anything else. A damaged or irregular archive is refused here, once."""
        if not self.is_zip:
            return []
        names = _zip_names(self.path)
        _check_archive_layout(self.path, names)
        return [n.split("/", 1)[1] for n in names]


def probe(path: str | os.PathLike) -> Probe:
    """The artifact at `path`, checked to exist (a folder must hold a config.json, a file may not be empty)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist; check the path")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(f"{path} is a folder without config.json: a model folder needs a Hugging Face config.json and "
                             "model.safetensors (save_pretrained writes both); otherwise pass the model file inside it")
        return Probe(path, b"")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes): not a valid checkpoint or ONNX model; re-create or re-copy it")
    with open(path, "rb") as fh:
        return Probe(path, fh.read(4))


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            # Every member's header and CRC, read once here, so later reads cannot fail half-way.
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, struct.error, zlib.error) as exc:
        # (ValueError includes a member name that is not UTF-8; zipfile raises all of these on damage)
        raise InputError(f"{path} is a damaged zip archive ({str(exc)[:200]}): not a valid checkpoint; re-create or re-copy it") from exc
    if damaged is not None:
        raise InputError(f"{path} is a damaged zip archive (member {damaged} fails its CRC check): not a valid checkpoint; re-create or re-copy it")
    return names


def _check_archive_layout(path: Path, names: list[str]) -> None:
    """Refuse layouts on which Python's zipfile and torch's reader could see different files.

    torch's reader matches names without regard to case and falls back to older layouts
    when it cannot open an archive; a crafted archive could hide a pickle from our checks
    that way, so only the plain layout torch itself writes is accepted.
    """
    tops = {n.split("/", 1)[0] for n in names}
    lowered = [n.lower() for n in names]
    if len(tops) != 1 or any("/" not in n for n in names) or len(set(lowered)) != len(lowered):
        raise UnsafeFileError(
            f"{path} is a zip archive with an irregular layout (several top folders, top-level files or names that differ only by case); "
            "it is not one PyTorch wrote, so it was not loaded"
        )
