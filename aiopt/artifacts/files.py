"""The files an artifact is made of (a file with its by-batch companions, or a model folder): their
checksum, their size on disk, and copying them together."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from aiopt.artifacts.base import METADATA_KEY, parse_metadata
from aiopt.artifacts.checks import MissingCompanionError, companion_path
from aiopt.errors import InputError
from aiopt.fileio import atomic_path, sha256_file


def _folder_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))


def artifact_sha256(path: str | os.PathLike) -> str:
    """The file's sha256; for a model folder, over its files' names and digests."""
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in _folder_files(path):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def artifact_size(path: str | os.PathLike) -> int:
    """Bytes on disk: the file (with the companion files its by-batch routes name), or every
    file of a model folder."""
    path = Path(path)
    return sum(f.stat().st_size for f in (_folder_files(path) if path.is_dir() else artifact_files(path)))


def route_path(main: str | os.PathLike, route: dict) -> Path:
    """The file a by-batch route of the artifact `main` serves from: `main` itself, or the
    companion file the route names beside it (checked by checks.companion_path: a plain
    file in the main file's folder with the sha256 recorded)."""
    if not route.get("file"):
        return Path(main)
    return companion_path(main, route)


def _routes_in_file(path: Path) -> list[dict]:
    import onnx

    try:
        props = {p.key: p.value for p in onnx.load_model(str(path), load_external_data=False).metadata_props}
    except Exception:  # noqa: BLE001 -- not readable as ONNX: the file alone (load_model says what is wrong)
        return []
    return parse_metadata(props.get(METADATA_KEY), path).get("dispatch") or []


def artifact_files(path: str | os.PathLike, missing_ok: bool = True) -> list[Path]:
    """The files that make up an artifact: the file itself, then the companion files of its
    by-batch routes (an ONNX artifact whose smaller batches are served by another graph), each
    checked (checks.companion_path). A companion that is absent is left out (the main
    file runs alone) unless `missing_ok` is False; any other problem is an InputError."""
    path = Path(path)
    if path.suffix != ".onnx" or not path.is_file():
        return [path]
    files = [path]
    for route in _routes_in_file(path):
        if not route.get("file"):
            continue
        try:
            companion = companion_path(path, route)
        except MissingCompanionError:
            if missing_ok:
                continue
            raise
        if companion not in files:
            files.append(companion)
    return files


def copy_artifact(source: str | os.PathLike, target: str | os.PathLike, link: bool = False, force: bool = False) -> None:
    """Copy (or hard-link, where the filesystem allows) an artifact with its companion files;
    companions keep their names, beside `target`. Only the artifact's own checked files are
    copied, all of them (a missing companion is an InputError), and an existing file at the
    destination is replaced only with `force`."""
    source, target = Path(source), Path(target)
    files = artifact_files(source, missing_ok=False)
    destinations = [target if file == source else target.parent / file.name for file in files]
    for file, to in zip(files, destinations):
        if os.path.lexists(to) and not force:
            raise InputError(f"{to} already exists; copying {source} would replace it: remove it, choose another target or pass force=True")
        if to.exists() and to.resolve() == file.resolve():
            raise InputError(f"{to} is {file} itself; choose another target")
    for file, to in zip(files, destinations):
        if link:
            try:
                if force:
                    Path(to).unlink(missing_ok=True)
                os.link(file, to)
                continue
            except OSError:  # another filesystem, or links not allowed
                pass
        with atomic_path(to) as tmp:
            shutil.copyfile(file, tmp)
