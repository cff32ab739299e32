"""One validation of what aiopt reads from a file it did not necessarily write.

Metadata embedded in an artifact (by-batch routes, serving settings, companion files) and the
config.json of a Hugging Face folder are input like any other: a hostile or careless file can name
a file outside the artifact, put a string where a number belongs, or ask for a model that would
take the machine's memory. Every reader (load, inspect, copy_artifact, bench, deploy) checks them
here, so they all refuse the same things with the same one-line InputError (exit 2).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path
import struct

from aiopt.errors import InputError, UnsupportedModelError
from aiopt.fileio import sha256_file

ROUTE_RUNTIMES = ("onnxruntime", "openvino")  # what a by-batch route can serve on (quantize writes these)
PRECISIONS = ("f32", "bf16")
_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_MODEL_MEMORY_ENV = "AIOPT_MAX_MODEL_MEMORY"


class MissingCompanionError(InputError):
    """A companion file a by-batch route names is not beside the main file (it was not copied)."""


# ---------------------------------------------------------------- artifact metadata

def _positive_int(value, what: str, where, most: int = 2**31 - 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise InputError(f"{where}: its aiopt metadata is damaged ({what} is {_show(value)}, not a whole number from 1 to {most}); "
                         "re-create the file with aiopt")


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_serving(serving, where, what: str = "serving") -> dict:
    """Serving settings a Runner or a Triton config takes from the metadata: a JSON object whose
    known keys hold what they should (`threads` a positive int, `inference_precision` f32 or bf16,
    `trim_padding` a bool)."""
    if serving is None:
        return {}
    if not isinstance(serving, dict):
        raise InputError(f"{where}: its aiopt metadata is damaged ({what} is {_show(serving)}, not an object); re-create the file with aiopt")
    if serving.get("threads") is not None:
        _positive_int(serving["threads"], f"{what}.threads", where, most=4096)
    if "inference_precision" in serving and serving["inference_precision"] not in PRECISIONS:
        raise InputError(f"{where}: its aiopt metadata is damaged ({what}.inference_precision is {_show(serving['inference_precision'])}, "
                         f"not one of {', '.join(PRECISIONS)}); re-create the file with aiopt")
    if "trim_padding" in serving and not isinstance(serving["trim_padding"], bool):
        raise InputError(f"{where}: its aiopt metadata is damaged ({what}.trim_padding is {_show(serving['trim_padding'])}, not true/false); "
                         "re-create the file with aiopt")
    return serving


def check_companion_name(name, where) -> None:
    """A companion is named by a plain file name beside the main file: no folder, no `..`, no hidden file."""
    if (not isinstance(name, str) or not name or name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name
            or not name.isprintable() or os.path.basename(name) != name or len(name) > 255):
        raise InputError(f"{where} names a route file {_show(name)} outside its folder (a companion must be a file name beside it); "
                         "re-create the artifact with aiopt quantize")


def check_routes(dispatch, where) -> list[dict]:
    """By-batch routes ({"max_batch", "runtime", "file", "sha256", "serving"}), smallest batch
    first, the last one open-ended (max_batch null)."""
    if dispatch is None:
        return []
    if not isinstance(dispatch, list) or not dispatch or not all(isinstance(r, dict) for r in dispatch):
        raise InputError(f"{where}: its aiopt metadata is damaged (dispatch is {_show(dispatch)}, not a list of routes); "
                         "re-create the file with aiopt quantize")
    previous = 0
    for index, route in enumerate(dispatch):
        label = f"dispatch[{index}]"
        if route.get("runtime") not in ROUTE_RUNTIMES:
            raise InputError(f"{where}: its aiopt metadata is damaged ({label}.runtime is {_show(route.get('runtime'))}, not one of "
                             f"{', '.join(ROUTE_RUNTIMES)}); re-create the file with aiopt quantize")
        if "max_batch" not in route:
            raise InputError(f"{where}: its aiopt metadata is damaged ({label} has no max_batch); re-create the file with aiopt quantize")
        limit = route["max_batch"]
        last = index == len(dispatch) - 1
        if limit is None and not last:
            raise InputError(f"{where}: its aiopt metadata is damaged ({label} serves any batch but is not the last route); "
                             "re-create the file with aiopt quantize")
        if limit is not None:
            _positive_int(limit, f"{label}.max_batch", where)
            if limit <= previous:
                raise InputError(f"{where}: its aiopt metadata is damaged (dispatch routes are not in increasing max_batch order); "
                                 "re-create the file with aiopt quantize")
            previous = limit
        if route.get("file") is not None:
            check_companion_name(route["file"], where)
            digest = route.get("sha256")
            if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
                raise InputError(f"{where}: route file {route['file']!r} has no valid sha256 in its metadata, so it cannot be checked; "
                                 "re-create the artifact with aiopt quantize")
        check_serving(route.get("serving"), where, f"{label}.serving")
    return dispatch


def check_artifact_metadata(data: dict, where) -> None:
    """What readers act on in an artifact's metadata: routes, serving and the Hugging Face record."""
    check_routes(data.get("dispatch"), where)
    check_serving(data.get("serving"), where)
    if data.get("runtime") is not None and not isinstance(data["runtime"], str):
        raise InputError(f"{where}: its aiopt metadata is damaged (runtime is {_show(data['runtime'])}); re-create the file with aiopt")
    hf = data.get("hf")
    if hf is not None:
        if not isinstance(hf, dict):
            raise InputError(f"{where}: its aiopt metadata is damaged (hf is {_show(hf)}, not an object); re-create the file with aiopt")
        if hf.get("folder") is not None and (not isinstance(hf["folder"], str) or not hf["folder"].isprintable()):
            raise InputError(f"{where}: its aiopt metadata is damaged (hf.folder is {_show(hf['folder'])}); re-create the file with aiopt")
        for key in ("vocab_size", "max_length"):
            if hf.get(key) is not None:
                _positive_int(hf[key], f"hf.{key}", where)


def companion_path(main: str | os.PathLike, route: dict) -> Path:
    """The companion file a route names: a plain file (not a link) in the main file's folder whose
    sha256 is the one recorded. MissingCompanionError when it is absent, InputError otherwise."""
    main = Path(main)
    name = route.get("file")
    check_companion_name(name, main)
    path = main.parent / name
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise MissingCompanionError(f"{main} serves batches up to {route.get('max_batch')} from {name}, which is not beside it; copy both "
                                    f"files together (or run {main.name} alone with --backend onnxruntime or --backend openvino)") from None
    except OSError as exc:
        raise InputError(f"{path} cannot be read ({exc.strerror}); check the file") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path} (a route file of {main.name}) is a link or not a plain file; aiopt reads companion files only as "
                         "plain files beside the main file: copy the real file there")
    digest = route.get("sha256")
    if not digest or sha256_file(path) != digest:
        raise InputError(f"{path} is not the file {main.name} was written with (its sha256 differs); copy both files from one aiopt quantize run")
    return path


# ---------------------------------------------------------------- Hugging Face folders

# config.json keys (by their names across architectures) of the sizes that decide the memory a model takes
_LAYERS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_HIDDEN = ("hidden_size", "d_model", "n_embd", "dim")
_HEADS = ("num_attention_heads", "n_head", "num_heads", "n_heads")
_INTERMEDIATE = ("intermediate_size", "d_ff", "n_inner", "ffn_dim", "hidden_dim")
_OTHER_SIZES = ("vocab_size", "max_position_embeddings", "type_vocab_size", "num_labels", "num_key_value_heads")


def _size(config: dict, keys: tuple, path, required: bool = False) -> int | None:
    key = next((k for k in keys if k in config and config[k] is not None), None)
    if key is None:
        return None
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "type_vocab_size" else 1):
        raise InputError(f"{path}: {key} is {_show(value)}, not a positive whole number; fix config.json or re-save the folder with save_pretrained")
    return value


def estimate_model_bytes(config: dict, path, seq_len: int = 128) -> tuple[int, int]:
    """(parameters, bytes to build and run it once in float32) estimated from config.json alone:
    embeddings plus per layer attention (4 h^2) and feed-forward (2 h i), and the activations of
    one sequence. Malformed sizes are an InputError."""
    layers = _size(config, _LAYERS, path) or 1
    hidden = _size(config, _HIDDEN, path) or 1
    heads = _size(config, _HEADS, path) or 1
    intermediate = _size(config, _INTERMEDIATE, path) or 4 * hidden
    sizes = {k: _size(config, (k,), path) or 0 for k in _OTHER_SIZES}
    if hidden % heads:
        raise InputError(f"{path}: the hidden size {hidden} is not a multiple of the {heads} attention heads; fix config.json")
    embeddings = (sizes["vocab_size"] + sizes["max_position_embeddings"] + sizes["type_vocab_size"]) * hidden
    params = embeddings + layers * (4 * hidden * hidden + 2 * hidden * intermediate) + hidden * sizes["num_labels"]
    activations = 4 * seq_len * (heads * seq_len + intermediate + 4 * hidden)
    modules = 65536 * layers  # each layer's Python modules and tensor headers: what a million tiny layers cost
    return params, 4 * params + activations + modules


def max_model_memory() -> int:
    """The most bytes a Hugging Face model may take: AIOPT_MAX_MODEL_MEMORY (set by
    `aiopt --max-model-memory`) or half the memory available now."""
    given = os.environ.get(MAX_MODEL_MEMORY_ENV)
    if given:
        return parse_bytes(given)
    try:
        with open("/proc/meminfo") as fh:
            available = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return 16 << 30  # no /proc: a limit no sane model on a workstation reaches
    return available // 2


def parse_bytes(text: str) -> int:
    """'40GB', '512MB', '1.5G', '1000000' -> bytes."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtT]?)i?[bB]?\s*", str(text))
    if not match:
        raise InputError(f"--max-model-memory {text!r} is not a size; write e.g. 40GB or 512MB")
    return int(float(match.group(1)) * 1024 ** "_KMGT".index(match.group(2).upper() or "_"))


def check_hf_config(folder: Path, config: dict, known_model_types) -> None:
    """Before transformers builds anything: the model type is one transformers ships (code in
    the folder is never run, so an unknown type with an `auto_map` is refused), and the sizes are
    numbers whose model fits the memory limit."""
    path = folder / "config.json"
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in known_model_types:
        custom = " and names Python code in the folder to build it (auto_map)" if config.get("auto_map") else ""
        raise UnsupportedModelError(f"{path}: model_type {_show(model_type)} is not one transformers knows{custom}; aiopt never runs code "
                                    "shipped in a folder (trust_remote_code): use a folder of a standard architecture, or upgrade transformers")
    architectures = config.get("architectures")
    if architectures is not None and (not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures)):
        raise InputError(f"{path}: architectures is {_show(architectures)}, not a list of class names; fix config.json or re-save the folder")
    params, needed = estimate_model_bytes(config, path)
    limit = max_model_memory()
    if needed > limit:
        raise InputError(f"{path} describes a model of about {params / 1e9:.3g} billion parameters needing ~{needed / 2**30:.3g} GiB, "
                         f"more than the {limit / 2**30:.3g} GiB allowed (half the free memory); check config.json, or raise the limit "
                         "with aiopt --max-model-memory SIZE")


def check_safetensors(folder: Path) -> None:
    """The folder's safetensors weights (one file, or the shards an index names) are plain files in
    the folder whose header and tensor offsets fit the file: a truncated copy or a link to
    something else is one line here, not an error from deep inside the loader."""
    index = folder / "model.safetensors.index.json"
    if _exists(index):
        _plain_file(index, folder)
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        except (OSError, ValueError, AttributeError) as exc:
            raise InputError(f"{index} is not a valid safetensors index ({exc}); re-save the folder with save_pretrained") from None
        if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
            raise InputError(f"{index} has no weight_map of tensor names to files; re-save the folder with save_pretrained")
        shards = sorted(set(weight_map.values()))
        for name in shards:
            if not name or os.path.basename(name) != name or name.startswith(".") or "\0" in name:
                raise InputError(f"{index} names a weights file {_show(name)} outside the folder; re-save the folder with save_pretrained")
    else:
        shards = ["model.safetensors"]
    for name in shards:
        _check_safetensors_file(folder / name, folder)


def _exists(path: Path) -> bool:
    return os.path.lexists(path)


def _plain_file(path: Path, folder: Path) -> int:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise InputError(f"{path} is missing; copy the whole model folder (save_pretrained writes every weights file)") from None
    if stat.S_ISLNK(info.st_mode):
        try:
            info = os.stat(path)
        except OSError:
            raise InputError(f"{path} is a link to nothing; copy the real weights file into {folder}") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path} is not a plain file (a folder or a device); copy the real weights file into {folder}")
    return info.st_size


def _check_safetensors_file(path: Path, folder: Path) -> None:
    size = _plain_file(path, folder)
    damaged = f"{path} is not a complete safetensors file"
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ValueError("shorter than its 8-byte header length")
            (length,) = struct.unpack("<Q", head)
            if length > min(size - 8, 100 << 20):
                raise ValueError(f"its header says {length} bytes, the file has {size}")
            header = json.loads(fh.read(length))
        if not isinstance(header, dict):
            raise ValueError("its header is not a JSON object")
        end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    except (OSError, ValueError, TypeError, KeyError, IndexError, struct.error) as exc:
        raise InputError(f"{damaged} ({exc}); re-copy it or re-save the folder with save_pretrained") from None
    if not isinstance(end, int) or 8 + length + end > size:
        raise InputError(f"{damaged} (its tensors need {8 + length + end} bytes, the file has {size}: truncated?); "
                         "re-copy it or re-save the folder with save_pretrained")


# ---------------------------------------------------------------- integrity of aiopt's ONNX files

INTEGRITY_OVER = "the ONNX model serialized without its aiopt.json metadata entry"


def onnx_checksum(model, metadata_key: str = "aiopt.json") -> str:
    """sha256 of the model's graph, weights and other properties: the model serialized (protobuf's
    deterministic form) without the aiopt metadata entry, so recording it there does not change it."""
    entries = [(p.key, p.value) for p in model.metadata_props]
    del model.metadata_props[:]
    try:
        for key, value in entries:
            if key != metadata_key:
                model.metadata_props.add(key=key, value=value)
        data = model.SerializeToString(deterministic=True)
    finally:
        del model.metadata_props[:]
        for key, value in entries:
            model.metadata_props.add(key=key, value=value)
    return hashlib.sha256(data).hexdigest()


def integrity_record(model, metadata_key: str = "aiopt.json") -> dict:
    return {"sha256": onnx_checksum(model, metadata_key), "over": INTEGRITY_OVER}


def unseal(model, metadata_key: str = "aiopt.json") -> None:
    """Drop the checksum a tool (NNCF, ORT's converters, aiopt's own graph rewrites) copied from the
    aiopt file it started from: the derived file is not what aiopt sealed, so it loads as "absent"
    instead of "changed since aiopt wrote it"; the writer that ships a file seals it anew."""
    for prop in model.metadata_props:
        if prop.key == metadata_key:
            try:
                data = json.loads(prop.value)
            except ValueError:
                return
            if isinstance(data, dict) and data.pop("integrity", None) is not None:
                prop.value = json.dumps(data)


def integrity_status(model, metadata: dict, path, metadata_key: str = "aiopt.json") -> str:
    """"ok", "mismatch" (changed since aiopt wrote it) or "absent" (an older or foreign file)."""
    record = metadata.get("integrity")
    if record is None:
        return "absent"
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str) or not _SHA256.fullmatch(record["sha256"]):
        raise InputError(f"{path}: its aiopt metadata is damaged (integrity is {_show(record)}); re-create the file with aiopt")
    return "ok" if onnx_checksum(model, metadata_key) == record["sha256"] else "mismatch"


def check_integrity(model, metadata: dict, path, metadata_key: str = "aiopt.json") -> str:
    status = integrity_status(model, metadata, path, metadata_key)
    if status == "mismatch":
        raise UnsupportedModelError(f"{path} was changed since aiopt wrote it (the checksum of its graph and weights differs from the one "
                                    "in its metadata); re-create it with aiopt, or re-copy the original")
    return status


# ---------------------------------------------------------------- input shapes a user gives

_ITEMSIZE = {"float64": 8, "int64": 8, "float32": 4, "int32": 4, "float16": 2, "bfloat16": 2, "int16": 2}


def check_input_sizes(specs, what: str = "--input-shape") -> None:
    """One sample of every input must fit the memory limit (max_model_memory): a shape such as
    batchx1000000000000 is refused in one line instead of failing to allocate, or being ignored."""
    limit = max_model_memory()
    for spec in specs:
        elements = 1
        for dim in spec.shape[1:]:
            if isinstance(dim, int):
                elements *= dim
        needed = elements * _ITEMSIZE.get(str(spec.dtype), 1)
        if needed > limit:
            raise InputError(f"{what} {spec}: one sample of {spec.name} takes {needed / 2**30:.3g} GiB, more than the "
                             f"{limit / 2**30:.3g} GiB allowed (half the free memory); check the shape, or raise the limit with aiopt --max-model-memory")
