"""Save and load every artifact format aiopt reads; detect the format from the content.

Formats, by what the file holds (never by its name):
- aiopt checkpoint: a torch zip archive holding {"aiopt_format", "metadata" (JSON text),
  "state_dict"}; loads with torch.load(weights_only=True) and is rebuilt from the registry.
- TorchScript archive (torch.jit), with aiopt metadata in the extra file `aiopt.json`.
- torch.export program (.pt2), with aiopt metadata in the extra file `aiopt.json`.
- ONNX model, with aiopt metadata in metadata_props["aiopt.json"].
- A pickled nn.Module (torch.save(model) or a raw pickle): unpickling runs code, so it is
  refused unless the caller passes trust_pickle=True.
- A Hugging Face model folder (a directory with config.json): loaded by aiopt.hf.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import os
import struct
import sys
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiopt.artifacts.checks import MissingCompanionError, check_artifact_metadata, check_input_sizes, check_integrity, companion_path, integrity_status
from aiopt.errors import InputError, UnsafeFileError, UnsupportedModelError, first_line
from aiopt.fileio import atomic_path, sha256_file, write_with
from aiopt.specs import TensorSpec, specs_from_json

CHECKPOINT_FORMAT = "aiopt-checkpoint"
CHECKPOINT_VERSION = 1
METADATA_KEY = "aiopt.json"  # extra-file name in TorchScript/.pt2 archives, metadata_props key in ONNX

FORMAT_AIOPT = "aiopt-checkpoint"
FORMAT_TORCHSCRIPT = "torchscript"
FORMAT_EXPORT = "torch-export"
FORMAT_ONNX = "onnx"
FORMAT_PICKLE = "torch-pickle"
FORMAT_HF = "hf-folder"  # a Hugging Face model folder (config.json + safetensors), loaded by aiopt.hf

_TRUST_HINT = "pass --trust-pickle (API: trust_pickle=True) only if you trust whoever made the file"


@dataclass
class LoadedModel:
    """A loaded artifact: the runnable model plus what aiopt knows about it."""

    path: Path
    format: str
    model: Any  # nn.Module, or onnx.ModelProto for ONNX files
    metadata: dict = field(default_factory=dict)
    input_spec: list[TensorSpec] = field(default_factory=list)
    integrity: str | None = None  # ONNX: "ok", "mismatch" or "absent" (artifact_checks.integrity_status)

    @property
    def is_torch(self) -> bool:
        return self.format != FORMAT_ONNX


# ---------------------------------------------------------------- metadata helpers

def command_line() -> str:
    """The command that is running, as a user would retype it, passwords and tokens masked (it is
    recorded in every artifact's metadata and in reports, which travel further than the shell)."""
    from aiopt.redact import mask_argv

    return " ".join(["aiopt" if Path(sys.argv[0]).stem in ("aiopt", "__main__", "cli") else Path(sys.argv[0]).name, *mask_argv(sys.argv[1:])])


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def lineage_entry(metadata: dict, path: str | os.PathLike) -> dict:
    """How an artifact appears in its descendants' lineage."""
    return {
        "step": metadata.get("step"),
        "artifact": str(path),
        "architecture": metadata.get("architecture"),
        "accuracy": (metadata.get("metrics") or {}).get("accuracy"),
        "created_at": metadata.get("created_at"),
    }


def parent_record(parent: LoadedModel) -> dict:
    return {"path": str(parent.path), "sha256": artifact_sha256(parent.path), "step": parent.metadata.get("step")}


def _folder_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))


def artifact_sha256(path: str | os.PathLike) -> str:
    """The file's sha256; for a model folder, over its files' names and digests."""
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    import hashlib

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
    companion file the route names beside it (checked by artifact_checks.companion_path: a plain
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
    return _parse_metadata(props.get(METADATA_KEY), path).get("dispatch") or []


def artifact_files(path: str | os.PathLike, missing_ok: bool = True) -> list[Path]:
    """The files that make up an artifact: the file itself, then the companion files of its
    by-batch routes (an ONNX artifact whose smaller batches are served by another graph), each
    checked (artifact_checks.companion_path). A companion that is absent is left out (the main
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
    import shutil

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


# What a derived artifact inherits from its parent; everything else describes the new step.
_INHERITED = ("architecture", "size", "config", "inputs", "outputs", "num_classes", "dataset", "params_count", "hf", "task", "quality_metric")


def child_metadata(parent: LoadedModel, step: str, **fields: Any) -> dict:
    """Metadata for an artifact made from `parent` by `step` (export, quantize, ...)."""
    import aiopt

    inherited = {k: parent.metadata[k] for k in _INHERITED if k in parent.metadata}
    lineage = list(parent.metadata.get("lineage") or [lineage_entry(parent.metadata or {"step": "import"}, parent.path)])
    return {
        "aiopt_version": aiopt.__version__,
        **inherited,
        "step": step,
        "command": command_line(),
        "created_at": now_iso(),
        "parent": parent_record(parent),
        "lineage": lineage,
        **fields,
    }


def with_own_lineage(metadata: dict, path: str | os.PathLike) -> dict:
    """The metadata as stored at `path`: its lineage ends with the artifact itself."""
    lineage = list(metadata.get("lineage") or [])
    return {**metadata, "lineage": lineage + [lineage_entry(metadata, path)]}


# ---------------------------------------------------------------- saving

def save_checkpoint(model, metadata: dict, path: str | os.PathLike) -> Path:
    """Write an aiopt checkpoint atomically. `metadata` must be JSON-able (checked here)."""
    import torch

    path = Path(path)
    metadata = with_own_lineage({**metadata, "format": FORMAT_AIOPT}, path)
    payload = {
        "aiopt_format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "metadata": json.dumps(metadata),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        write_with(tmp, lambda fh: torch.save(payload, fh))
    return path


# ---------------------------------------------------------------- loading

def load_model(
    path: str | os.PathLike,
    trust_pickle: bool = False,
    input_spec: list[TensorSpec] | None = None,
    verify_integrity: bool = True,
) -> LoadedModel:
    """Load any supported artifact. `input_spec` supplies the inputs of a model without metadata.
    An ONNX file aiopt wrote that was changed since is refused unless `verify_integrity` is False
    (inspect reports it instead)."""
    path = _check_readable(path)
    kind, members = ("folder", []) if path.is_dir() else _sniff(path)
    if kind == "folder":
        from aiopt.artifacts.hf import load_hf_folder

        loaded = load_hf_folder(path, trust_pickle)
    elif kind == "zip":
        loaded = _load_zip(path, members, trust_pickle)
    elif kind == "pickle":
        loaded = _load_pickle(path, trust_pickle)
    else:
        loaded = _load_onnx(path, verify_integrity)
    if input_spec:
        check_input_sizes(input_spec)
        loaded.input_spec = _merge_input_spec(loaded, input_spec)
    return loaded


def _check_readable(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist; check the path")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(f"{path} is a folder without config.json: a model folder needs a Hugging Face config.json and "
                             "model.safetensors (save_pretrained writes both); otherwise pass the model file inside it")
        return path
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes): not a valid checkpoint or ONNX model; re-create or re-copy it")
    return path


def _sniff(path: Path) -> tuple[str, list[str]]:
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head == b"PK\x03\x04":  # torch reads archives by their leading magic, so do we
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
        _check_archive_layout(path, names)
        # torch archives put every member under one top folder whose name varies.
        return "zip", [n.split("/", 1)[1] for n in names]
    if head[:1] == b"\x80":  # pickle protocol >= 2: a legacy torch.save file or a raw pickle
        return "pickle", []
    return "onnx", []


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


def _load_zip(path: Path, members: list[str], trust_pickle: bool) -> LoadedModel:
    if "archive_format" in members or any(m.startswith("models/") and m.endswith(".json") for m in members):
        return _load_export(path, members, trust_pickle)
    if any(m.startswith("code/") for m in members) or "constants.pkl" in members:
        return _load_torchscript(path)
    if "data.pkl" in members:
        return _load_torch_archive(path, trust_pickle)
    raise InputError(f"{path} is a zip archive but not a PyTorch checkpoint, TorchScript or torch.export file")


def _unsafe_globals(source) -> list[str]:
    import torch

    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(source))
    except Exception as exc:  # a damaged archive: report it as such
        raise InputError(f"not a valid checkpoint: cannot read its pickle ({exc}); re-create or re-copy it") from exc


def _load_torch_archive(path: Path, trust_pickle: bool) -> LoadedModel:
    import torch

    unsafe = _unsafe_globals(str(path))
    if unsafe:
        if not trust_pickle:
            raise UnsafeFileError(
                f"{path} is a pickled Python object (it references {', '.join(unsafe[:3])}{'...' if len(unsafe) > 3 else ''}); "
                f"loading it would run code from the file, so it was not loaded; {_TRUST_HINT}"
            )
        return _trusted_module(path, _trusted_unpickle(path))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{path} is not a valid checkpoint ({first_line(exc)}); re-create or re-copy it") from exc
    return _from_torch_payload(path, payload)


def _from_torch_payload(path: Path, payload: Any) -> LoadedModel:
    import torch

    if isinstance(payload, dict) and payload.get("aiopt_format") == CHECKPOINT_FORMAT:
        return _from_checkpoint(path, payload)
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise InputError(
            f"{path} holds a bare state_dict without its architecture; load it into your model and save it with "
            "aiopt.save_checkpoint, or export it to TorchScript/torch.export/ONNX"
        )
    raise InputError(f"{path} is a PyTorch file but not an aiopt checkpoint or a model (it holds a {type(payload).__name__})")


def _trusted_unpickle(path: Path) -> Any:
    """Only reached with trust_pickle=True: a full unpickle, which runs the file's code."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception:
        try:
            with open(path, "rb") as fh:
                return pickle.load(fh)
        except Exception as exc:
            raise InputError(f"{path} is not a valid pickle or checkpoint ({first_line(exc)}); re-create or re-copy it") from exc


def _from_checkpoint(path: Path, payload: dict) -> LoadedModel:
    from aiopt.reference_models import build_model

    version = payload.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise InputError(f"{path} is an aiopt checkpoint of format version {version}; this aiopt reads up to {CHECKPOINT_VERSION}: upgrade aiopt")
    try:
        metadata = json.loads(payload["metadata"])
        model = build_model(metadata["architecture"], metadata["config"])
        model.load_state_dict(payload["state_dict"])
    except InputError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"{path} is a damaged aiopt checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc
    model.eval()
    check_artifact_metadata(metadata, path)  # the same checks as every other format's metadata
    return LoadedModel(path, FORMAT_AIOPT, model, metadata, specs_from_json(metadata.get("inputs")))


def _load_torchscript(path: Path) -> LoadedModel:
    import torch

    extra = {METADATA_KEY: ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:
        raise InputError(f"{path} is not a valid TorchScript file ({str(exc).splitlines()[0][:200]}); re-create or re-copy it") from exc
    module.eval()
    metadata = _parse_metadata(extra.get(METADATA_KEY), path)
    return LoadedModel(path, FORMAT_TORCHSCRIPT, module, metadata, specs_from_json(metadata.get("inputs")))


def _export_pickled_members(path: Path, members: list[str]) -> list[str]:
    """Members of a .pt2 archive that torch.export.load would unpickle or run as native code."""
    lowered = [m.lower() for m in members]
    risky = [m for m, low in zip(members, lowered) if low.startswith("data/aotinductor/") or low.endswith((".so", ".dll", ".dylib"))]
    if "archive_format" not in lowered:
        risky.append("legacy .pt2 layout (pickled state dict)")
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            member = name.split("/", 1)[1].lower()
            if member.startswith("data/") and member.endswith("_config.json"):
                risky += [f"{member}:{key}" for key in _pickled_config_entries(path, member, archive.read(name))]
            elif member.endswith(".pt") and _unsafe_globals(io.BytesIO(archive.read(name))):
                risky.append(member)
    return risky


def _pickled_config_entries(path: Path, member: str, raw: bytes) -> list[str]:
    try:
        config = json.loads(raw or b"{}").get("config", {})
        entries = [(key, entry.get("use_pickle"), str(entry.get("path_name", ""))) for key, entry in config.items()]
    except (ValueError, AttributeError, TypeError) as exc:
        raise InputError(f"{path}: {member} is not a valid torch.export payload config ({exc}); re-create the file") from exc
    return [key for key, use_pickle, name in entries if use_pickle or not name.startswith(("weight_", "tensor_"))]


@contextlib.contextmanager
def _weights_only_everywhere():
    """Backstop while torch.export.load runs: any torch.load inside it may not fall back to pickle."""
    import logging

    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    loggers = [logging.getLogger(n) for n in ("torch.export", "torch._export", "torch._export.serde.serialize")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)  # torch logs tracebacks before raising; we report one line
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def _load_export(path: Path, members: list[str], trust_pickle: bool) -> LoadedModel:
    import torch

    risky = _export_pickled_members(path, members)
    if risky and not trust_pickle:
        raise UnsafeFileError(
            f"{path} is a torch.export program whose parts {', '.join(risky[:3])} would be unpickled or run as native code "
            f"on load, so it was not loaded; {_TRUST_HINT}"
        )
    extra = {METADATA_KEY: ""}
    guard = contextlib.nullcontext() if trust_pickle else _weights_only_everywhere()
    try:
        with guard:
            program = torch.export.load(str(path), extra_files=extra)
    except Exception as exc:
        cause = exc.__cause__ or exc.__context__ or exc
        if "weights only load failed" in f"{exc} {cause}".lower():
            raise UnsafeFileError(f"{path} holds pickled objects that would run code on load, so it was not loaded; {_TRUST_HINT}") from exc
        if "cuda" in f"{exc} {cause}".lower() and not torch.cuda.is_available():
            raise InputError(f"{path} holds CUDA tensors and this machine has no CUDA GPU ({first_line(cause)}); load it where there "
                             "is one, or re-export it with --device cpu") from exc
        raise InputError(f"{path} is not a valid torch.export program ({first_line(cause)}); re-create or re-copy it") from exc
    metadata = _parse_metadata(extra.get(METADATA_KEY), path)
    spec = specs_from_json(metadata.get("inputs")) or _export_input_spec(program)
    loaded = LoadedModel(path, FORMAT_EXPORT, program.module(), metadata, spec)
    loaded.metadata.setdefault("params_count", sum(int(t.numel()) for t in program.state_dict.values()))
    return loaded


def _export_input_spec(program) -> list[TensorSpec]:
    """Input spec from the program's placeholders: symbolic sizes become named dims."""
    user_inputs = set(program.graph_signature.user_inputs)
    specs = []
    for node in program.graph.nodes:
        value = node.meta.get("val")
        if node.op != "placeholder" or node.name not in user_inputs or value is None or not hasattr(value, "shape"):
            continue
        shape = tuple(int(d) if isinstance(d, int) or str(d).isdigit() else ("batch" if i == 0 else f"dim{i}") for i, d in enumerate(value.shape))
        specs.append(TensorSpec(node.name, shape, str(value.dtype).removeprefix("torch.")))
    return specs


def _load_pickle(path: Path, trust_pickle: bool) -> LoadedModel:
    """A non-zip pickle: the legacy torch.save format, or a raw pickle.

    The weights-only unpickler is safe for both and is tried first, so a legacy checkpoint
    of plain tensors loads without the opt-in.
    """
    import pickle
    import pickletools

    import torch

    try:  # parse (never execute) the first pickle, so garbage is reported as garbage
        with open(path, "rb") as fh:
            for _ in pickletools.genops(fh):
                pass
    except Exception as exc:
        raise InputError(f"{path} is not a valid checkpoint (a damaged pickle: {first_line(exc)}); re-create or re-copy it") from exc
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            raise UnsafeFileError(
                f"{path} is a pickle that needs more than tensors to load ({first_line(exc)[:120]}); loading it would run code from "
                f"the file, so it was not loaded; {_TRUST_HINT}"
            ) from exc
        return _trusted_module(path, _trusted_unpickle(path))
    except Exception as exc:
        if trust_pickle:
            return _trusted_module(path, _trusted_unpickle(path))
        raise InputError(f"{path} is not a valid checkpoint ({first_line(exc)}); re-create or re-copy it") from exc
    return _from_torch_payload(path, payload)


def _trusted_module(path: Path, obj: Any) -> LoadedModel:
    from torch import nn

    if not isinstance(obj, nn.Module):
        raise InputError(f"{path} was unpickled (trusted) but holds a {type(obj).__name__}, not a torch.nn.Module")
    obj.eval()
    return LoadedModel(path, FORMAT_PICKLE, obj, {}, [])


def _load_onnx(path: Path, verify_integrity: bool = True) -> LoadedModel:
    import onnx

    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:
        raise InputError(f"{path} is not a valid checkpoint or ONNX model (it could not be parsed: {type(exc).__name__}); re-create or re-copy it") from exc
    if not model.graph.node or not model.opset_import or model.ir_version <= 0:
        raise InputError(f"{path} is not a valid checkpoint or ONNX model (no graph found); re-create or re-copy it")
    _check_external_data(model, path)
    try:
        # By path, so external data resolves against the model's folder, not the working directory.
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, ValueError, OSError) as exc:
        raise InputError(f"{path} is not a valid ONNX model ({first_line(exc)})") from exc
    props = {p.key: p.value for p in model.metadata_props}
    metadata = _parse_metadata(props.get(METADATA_KEY), path)
    # before external data is read in: the checksum was taken over the model as saved
    integrity = (check_integrity if verify_integrity else integrity_status)(model, metadata, path, METADATA_KEY)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in _all_tensors(model)):
        onnx.load_external_data_for_model(model, str(path.parent))
    spec = specs_from_json(metadata.get("inputs")) or _onnx_input_spec(model)
    return LoadedModel(path, FORMAT_ONNX, model, metadata, spec, integrity)


def _check_external_data(model, path: Path) -> None:
    """External tensor files must stay inside the model's folder: never read a file the model names elsewhere."""
    import onnx

    folder = path.parent.resolve()
    for tensor in _all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if not location or os.path.isabs(location) or not target.is_relative_to(folder):
            raise UnsafeFileError(f"{path}: tensor {tensor.name!r} points to external data {location!r} outside the model's folder; refused")
        if not target.is_file():
            raise InputError(f"{path}: external data file {location!r} for tensor {tensor.name!r} is missing; copy it next to the model")


def _all_tensors(model):
    """Every tensor of the model: initializers, attribute tensors and those in subgraphs."""
    from onnx.external_data_helper import _get_all_tensors

    return list(_get_all_tensors(model))


ONNX_DTYPES = {1: "float32", 10: "float16", 16: "bfloat16", 11: "float64", 7: "int64", 6: "int32", 9: "bool", 2: "uint8", 3: "int8"}


def onnx_value_specs(values, skip: set[str] = frozenset()) -> list[TensorSpec]:
    specs = []
    for value in values:
        if value.name in skip:
            continue
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim)
        specs.append(TensorSpec(value.name, dims, ONNX_DTYPES.get(tensor.elem_type, f"onnx:{tensor.elem_type}")))
    return specs


def _onnx_input_spec(model) -> list[TensorSpec]:
    from aiopt.specs import name_the_batch

    return name_the_batch(onnx_value_specs(model.graph.input, skip={t.name for t in model.graph.initializer}))


def _parse_metadata(text: str | None, path: Path) -> dict:
    if not text:
        return {}
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        specs_from_json(data.get("inputs"))
        specs_from_json(data.get("outputs"))
        accuracy = (data.get("metrics") or {}).get("accuracy")
        if accuracy is not None and not isinstance(accuracy, (int, float)):
            raise ValueError("metrics.accuracy is not a number")
        if not isinstance(data.get("lineage", []), list) or not all(isinstance(e, dict) for e in data.get("lineage", [])):
            raise ValueError("lineage is not a list of records")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise InputError(f"{path}: its aiopt metadata is damaged ({exc}); re-create the file") from exc
    check_artifact_metadata(data, path)  # routes, serving, companions, hf: one check for every reader
    return data


def _merge_input_spec(loaded: LoadedModel, given: list[TensorSpec]) -> list[TensorSpec]:
    """A user-given spec fills in a missing one, and must agree with a known one."""
    if not loaded.input_spec:
        return given
    known = loaded.input_spec
    mismatch = len(known) != len(given) or any(
        len(k.shape) != len(g.shape) or any(isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(k.shape[1:], g.shape[1:]))
        for k, g in zip(known, given)
    )
    if mismatch:
        raise InputError(
            f"--input-shape does not match the model: expected {'; '.join(map(str, known))}, got {'; '.join(map(str, given))}"
        )
    return [_merge_one(k, g) for k, g in zip(known, given)]


def _merge_one(known: TensorSpec, given: TensorSpec) -> TensorSpec:
    # a batch the user places where the model has a symbol (state:2xbatchx128) is kept where it is given
    if given.batch_axis is not None and given.batch_axis != known.batch_axis and not isinstance(known.shape[given.batch_axis], int):
        return TensorSpec(known.name, given.shape, known.dtype, known.value)
    # a size the user gives for one of the model's symbolic axes is honoured, not silently replaced
    shape = (known.shape[0], *(g if isinstance(g, int) and not isinstance(k, int) else k for k, g in zip(known.shape[1:], given.shape[1:])))
    return TensorSpec(known.name, shape, known.dtype, known.value)


def require_input_spec(loaded: LoadedModel) -> list[TensorSpec]:
    if not loaded.input_spec:
        raise InputError(f"{loaded.path} carries no input spec; pass --input-shape (e.g. --input-shape 1x40) and --input-dtype if not float32")
    return loaded.input_spec


def count_parameters(loaded: LoadedModel) -> int:
    if loaded.format == FORMAT_ONNX:
        return count_onnx_parameters(loaded.model.graph)
    if "params_count" in loaded.metadata and loaded.format == FORMAT_EXPORT:
        return int(loaded.metadata["params_count"])
    return int(sum(p.numel() for p in loaded.model.parameters()))


def count_onnx_parameters(graph) -> int:
    """Elements of the constant tensors a graph holds: initializers, Constant nodes (exporters
    that fold weights into the graph write them there) and both of these inside the subgraphs of
    If/Loop/Scan nodes (a model whose network sits in If branches)."""
    import onnx

    count = sum(_elements(t.dims) for t in graph.initializer)
    count += sum(_elements(t.values.dims) for t in graph.sparse_initializer)
    for node in graph.node:
        for attribute in node.attribute:
            if node.op_type == "Constant" and attribute.type == onnx.AttributeProto.TENSOR:
                count += _elements(attribute.t.dims)
            elif node.op_type == "Constant" and attribute.type in (onnx.AttributeProto.FLOATS, onnx.AttributeProto.INTS):
                count += len(attribute.floats) + len(attribute.ints)
            elif attribute.type == onnx.AttributeProto.GRAPH:
                count += count_onnx_parameters(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                count += sum(count_onnx_parameters(g) for g in attribute.graphs)
    return count


def _elements(dims) -> int:
    count = 1
    for dim in dims:
        count *= int(dim)
    return count


def output_spec(loaded: LoadedModel) -> list[TensorSpec]:
    """Outputs from metadata, the ONNX graph, or one run on an example input."""
    if loaded.metadata.get("outputs"):
        return specs_from_json(loaded.metadata["outputs"])
    if loaded.format == FORMAT_ONNX:
        return onnx_value_specs(loaded.model.graph.output)
    if not loaded.input_spec:
        return []
    return probe_outputs(loaded.model, loaded.input_spec)


def example_inputs(spec: list[TensorSpec], batch_size: int = 2, seq_len: int | None = None):
    """One tensor per input: symbolic dims other than batch take `seq_len` (default 1); an
    attention mask is all ones (a real batch is never all padding), other integers zeros."""
    import torch

    tensors = []
    for s in spec:
        dtype = getattr(torch, s.dtype, None)
        if dtype is None:
            raise UnsupportedModelError(f"input {s.name} has dtype {s.dtype}, which aiopt cannot make example data for")
        shape = s.concrete_shape(batch_size, seq_len or 1)
        fill = torch.ones if s.name == "attention_mask" else torch.zeros
        tensors.append(torch.randn(shape).to(dtype) if dtype.is_floating_point else fill(shape, dtype=dtype))
    return tuple(tensors)


def probe_outputs(module, spec: list[TensorSpec]) -> list[TensorSpec]:
    import torch

    with torch.no_grad():
        try:
            outputs = module(*example_inputs(spec))
        except Exception as exc:
            raise InputError(
                f"the model rejected an example input of {'; '.join(map(str, spec))} ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); check --input-shape"
            ) from exc
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    # Neutral names: a name such as "logits" would claim the output is class scores, which
    # decides how quality is judged (measure/quality.py); nothing here knows that.
    return [TensorSpec(f"output_{i}", ("batch", *o.shape[1:]), str(o.dtype).removeprefix("torch.")) for i, o in enumerate(outputs)]
