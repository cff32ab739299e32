"""`aiopt deploy ARTIFACT --triton REPO`: a Triton Inference Server model repository.

    REPO/NAME/config.pbtxt       platform or backend, inputs/outputs (types, dims), batching, instances
    REPO/NAME/1/model.onnx       (onnxruntime_onnx, or the openvino backend)  or  model.plan (tensorrt_plan)

An ONNX artifact is served on the runtime its metadata says it was measured fastest on (the
main route of a by-batch artifact), with the serving settings it was measured with that Triton's
backend can express (OpenVINO: LATENCY hint, BF16, thread cap; ONNX Runtime: thread cap); what
it cannot express is said in a note. `--runtime` overrides the runtime.

The model folder is assembled beside its final place and renamed into it, so Triton (which
may be polling the repository) never sees half a model.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from aiopt.artifacts import FORMAT_ONNX, load_model, onnx_value_specs
from aiopt.errors import InputError
from aiopt.export.tensorrt import sidecar_path
from aiopt.options import option
from aiopt.runtime import ENGINE_SUFFIXES
from aiopt.specs import specs_from_json

# numpy/ONNX dtype names -> Triton's DataType enum names
TRITON_TYPES = {
    "float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "float64": "TYPE_FP64",
    "int64": "TYPE_INT64", "int32": "TYPE_INT32", "int16": "TYPE_INT16", "int8": "TYPE_INT8",
    "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL",
}


@dataclass(frozen=True)
class TritonConfig:
    name: str | None = option(None, "--name", "Model name in the repository (default: the file name).")
    max_batch: int = option(64, "--max-batch", "max_batch_size; dynamic batching fills batches up to it.")
    instances: int = option(1, "--instances", "Model instances (instance_group count).")
    queue_delay_us: int = 100  # dynamic batching waits at most this long to fill a batch
    runtime: str | None = option(None, "--runtime", "ONNX: onnxruntime or openvino (default: the runtime the artifact was measured fastest on).")


RUNTIMES = ("onnxruntime", "openvino")


@dataclass(frozen=True)
class _Model:
    platform: str  # a Triton platform, or "openvino" (a backend: Triton has no openvino platform)
    file_name: str
    inputs: list  # TensorSpec
    outputs: list  # TensorSpec
    kind: str  # KIND_CPU | KIND_GPU
    batch_limit: int | None  # the largest batch the artifact takes (TensorRT profile), None: any
    metadata: dict
    parameters: tuple = ()  # (key, value) for the backend
    notes: tuple = ()


def _describe(artifact: Path, runtime: str | None = None) -> _Model:
    if str(artifact).endswith(ENGINE_SUFFIXES):
        try:
            sidecar = json.loads(sidecar_path(artifact).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{artifact} has no readable sidecar ({exc}); rebuild the engine with aiopt export --format tensorrt") from exc
        try:
            metadata = sidecar.get("aiopt_metadata") or {}
            outputs = specs_from_json(metadata.get("outputs")) if metadata.get("outputs") else []
            if [o.name for o in outputs] != list(sidecar["outputs"]):
                raise InputError(f"{artifact}'s sidecar does not describe its outputs' types; rebuild the engine with this aiopt")
            limit = max(shapes["max"][0] for shapes in sidecar["profile"].values())
            inputs = specs_from_json(sidecar["inputs"])
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise ValueError(f"profile batch {limit!r}")
        except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
            raise InputError(f"{artifact}'s sidecar is damaged ({type(exc).__name__}: {str(exc)[:120]}); rebuild the engine with aiopt export --format tensorrt") from None
        return _Model("tensorrt_plan", "model.plan", inputs, outputs, "KIND_GPU", limit, metadata)
    loaded = load_model(artifact)
    if loaded.format != FORMAT_ONNX:
        raise InputError(f"Triton serves ONNX models and TensorRT engines; export {artifact} first (aiopt export {artifact} --format onnx)")
    outputs = onnx_value_specs(loaded.model.graph.output)
    platform, parameters, notes = _onnx_serving(loaded.metadata, runtime)
    taken = {i.name for i in loaded.model.graph.input}  # a fixed input folded into the graph (--input sr=16000) is not served
    inputs = [s for s in loaded.input_spec if s.name in taken]
    return _Model(platform, "model.onnx", inputs, outputs, "KIND_CPU", None, loaded.metadata, parameters, notes)


def _onnx_serving(metadata: dict, runtime: str | None) -> tuple[str, tuple, tuple]:
    """Platform (or backend), backend parameters and notes for an ONNX artifact, from the
    serving plan its metadata records for its main file (quantize writes it: runtime, serving)."""
    measured = metadata.get("runtime") if metadata.get("runtime") in RUNTIMES else "onnxruntime"
    runtime = runtime or measured
    serving = metadata.get("serving") or {}
    threads = serving.get("threads")
    notes = []
    if runtime != measured:
        notes.append(f"the artifact was measured fastest on {measured}; this config serves it on {runtime} as asked")
    if serving.get("trim_padding"):
        notes.append("aiopt's Runner trims the padding columns of a batch before running it; Triton runs every column it is sent")
    if runtime == "onnxruntime":
        # the ONNX Runtime backend's own keys (onnxruntime_backend README, "Model Config Options")
        return "onnxruntime_onnx", ((("intra_op_thread_count", str(threads)),) if threads else ()), tuple(notes)
    # the OpenVINO backend's keys (openvino_backend README, "Parameters"); aiopt's Runner runs with the LATENCY hint
    parameters = [("PERFORMANCE_HINT", "LATENCY")]
    if threads:
        parameters.append(("INFERENCE_NUM_THREADS", str(threads)))
    if runtime == measured and serving.get("inference_precision") == "bf16":
        parameters.append(("HINT_BF16", "YES"))
    else:
        notes.append("Triton's openvino backend cannot pin FP32 inference: on CPUs with BF16 units OpenVINO runs in BF16, which aiopt "
                     "measured for this artifact only if it chose BF16 (check it there with aiopt compare, or serve it with --runtime onnxruntime)")
    return "openvino", tuple(parameters), tuple(notes)


def _batched(model: _Model) -> bool:
    """Triton's batching needs every input and output to lead with the batch dimension."""
    return all(spec.shape and spec.shape[0] == "batch" for spec in [*model.inputs, *model.outputs])


def _tensor_block(spec, batched: bool) -> str:
    if spec.dtype not in TRITON_TYPES:
        raise InputError(f"tensor {spec.name!r} has dtype {spec.dtype}, which Triton has no type for")
    dims = spec.shape[1:] if batched else spec.shape
    if any(isinstance(d, str) and d == "batch" for d in dims):
        raise InputError(f"tensor {spec.name!r} has the batch dimension in another position; Triton batches along the first")
    text_dims = ", ".join(str(d) if isinstance(d, int) else "-1" for d in dims)
    return f'  {{\n    name: {quoted(spec.name)}\n    data_type: {TRITON_TYPES[spec.dtype]}\n    dims: [ {text_dims} ]\n  }}'


def quoted(text) -> str:
    """A protobuf text-format string literal: every quote, backslash, newline and non-ASCII byte
    escaped, so no name (a hostile --name, an ONNX tensor name) can add a line to the config."""
    from google.protobuf import text_encoding  # protobuf comes with onnx

    return '"' + text_encoding.CEscape(str(text).encode("utf-8"), as_utf8=False) + '"'


# Triton finds models by folder name; it skips hidden folders and reads versions as numbers.
_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def check_model_name(name) -> str:
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name) or name.isdigit() or ".." in name:
        raise InputError(f"--name {name!r} is not a usable Triton model name: use letters, digits, '_', '-' and '.' (not first), "
                         "up to 128 characters, e.g. --name my_model")
    return name


def render_config(name: str, model: _Model, config: TritonConfig) -> str:
    batched = _batched(model)
    max_batch = int(config.max_batch) if batched else 0
    # Triton has no openvino platform: the backend is named, with the file it should load
    runs_on = ['backend: "openvino"', 'default_model_filename: "model.onnx"'] if model.platform == "openvino" else [f'platform: "{model.platform}"']
    lines = [f'name: {quoted(name)}', *runs_on, f"max_batch_size: {max_batch}",
             "input [", ",\n".join(_tensor_block(s, batched) for s in model.inputs), "]",
             "output [", ",\n".join(_tensor_block(s, batched) for s in model.outputs), "]"]
    if batched:
        lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {int(config.queue_delay_us)}\n}}")
    lines.append(f"instance_group [\n  {{\n    count: {int(config.instances)}\n    kind: {model.kind}\n  }}\n]")
    lineage = json.dumps([entry.get("step") for entry in model.metadata.get("lineage") or []])
    for key, value in [*model.parameters, ("aiopt_lineage", lineage)]:
        lines.append(f'parameters {{\n  key: {quoted(key)}\n  value: {{ string_value: {quoted(value)} }}\n}}')
    return "\n".join(lines) + "\n"


def deploy_triton(artifact: str | os.PathLike, repository: str | os.PathLike, config: TritonConfig = TritonConfig(), force: bool = False) -> dict:
    """Everything is checked and the config rendered before anything is written: a refusal leaves
    the repository as it was."""
    artifact, repository = Path(artifact), Path(repository)
    for flag, value in (("--max-batch", config.max_batch), ("--instances", config.instances), ("queue delay", config.queue_delay_us)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if flag == "queue delay" else 1):
            raise InputError(f"{flag} must be a whole number of at least {0 if flag == 'queue delay' else 1}, got {value!r}")
    if not artifact.is_file():
        raise InputError(f"{artifact} does not exist or is not a file")
    if repository.exists() and not repository.is_dir():
        raise InputError(f"--triton {repository} is a file, not a folder; pass the model repository folder (it is created if missing)")
    name = check_model_name(config.name if config.name is not None else artifact.name.split(".")[0])
    if config.runtime is not None and config.runtime not in RUNTIMES:
        raise InputError(f"--runtime {config.runtime!r} is not one Triton serves ONNX on here; use one of {', '.join(RUNTIMES)}")
    model = _describe(artifact, config.runtime)
    if config.runtime is not None and model.platform == "tensorrt_plan":
        raise InputError(f"{artifact} is a TensorRT engine, which only Triton's tensorrt_plan platform runs; drop --runtime")
    if model.batch_limit is not None and config.max_batch > model.batch_limit:
        raise InputError(f"--max-batch {config.max_batch} exceeds the engine's profile ({model.batch_limit}); lower it or rebuild with --max-batch")
    target = repository / name
    if target.exists() and not force:
        raise InputError(f"{target} already exists; pass --force to replace it")
    text = render_config(name, model, config)
    notes = [*model.notes, *_serving_notes(model.metadata)]
    try:
        repository.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the model repository {repository} ({exc.strerror}); choose another --triton") from None
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repository))
    try:
        (staging / "1").mkdir()
        shutil.copyfile(artifact, staging / "1" / model.file_name)
        (staging / "config.pbtxt").write_text(text)
        _swap_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"repository": str(repository), "model": name, "platform": model.platform, "config": str(target / "config.pbtxt"),
            "file": str(target / "1" / model.file_name), "max_batch_size": config.max_batch if _batched(model) else 0,
            "notes": notes}


def _serving_notes(metadata: dict) -> list[str]:
    """What of the artifact's measured serving plan Triton's config does not carry."""
    notes = []
    routes = metadata.get("dispatch") or []
    if len(routes) > 1:
        small = ", ".join(f"batches up to {r['max_batch']} on {r['runtime']}" + (f" from {r['file']}" if r.get("file") else "")
                          for r in routes[:-1])
        notes.append(f"Triton serves the main file on one runtime for every batch size; the artifact's faster routes for small batches "
                     f"({small}) are not used there")
    return notes


def _swap_into_place(staging: Path, target: Path) -> None:
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
