"""ONNX -> TensorRT engine, with a JSON sidecar that loading checks before deserialising.

TensorRT 11 builds strongly typed networks only: the builder's FP16/INT8 flags and the INT8
calibrator are gone, so the precision must already be in the ONNX. We therefore prepare the
ONNX first (everything here runs and is tested without TensorRT):
  fp32 -> the validated FP32 export;  fp16/bf16 -> float tensors converted, LayerNorm/Softmax
  and reductions kept in FP32;  int8 -> the symmetric QDQ model of `aiopt quantize --backend
  tensorrt` (explicit quantization).
Only `build_engine` and `TensorRTRunner` touch TensorRT, imported lazily; TensorRT 10 and 11
differ for us in one place, `_network_flags`.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from aiopt.artifacts import FORMAT_ONNX, load_model, onnx_value_specs, require_input_spec
from aiopt.errors import InputError, MissingDependencyError, UnsupportedModelError
from aiopt.export.float16 import convert_bfloat16, convert_float16
from aiopt.export.onnx import export_onnx
from aiopt.fileio import atomic_path, check_output_path, sha256_file, write_bytes_atomic
from aiopt.options import option
# What loading an engine needs lives with the runtime (below this layer); re-exported for the builders here
from aiopt.runtime.tensorrt_sidecar import INSTALL_HINT, SIDECAR_SUFFIX, check_sidecar, current_gpu, import_tensorrt, sidecar_path  # noqa: F401

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass(frozen=True)
class TensorRTConfig:
    precision: str = option("fp16", "--precision", "tensorrt/torch-cuda: fp32, fp16, bf16; tensorrt also int8 (from a QDQ model, aiopt quantize --backend tensorrt).")
    sparse: bool = option(False, "--sparse", "tensorrt: allow 2:4 sparse kernels (weights pruned with aiopt prune --method 2:4).")
    min_batch: int = option(1, "--min-batch", "tensorrt: smallest batch of the optimisation profile.")
    opt_batch: int = option(8, "--opt-batch", "tensorrt: batch the kernels are tuned for.")
    max_batch: int = option(64, "--max-batch", "tensorrt: largest batch of the optimisation profile.")
    workspace_mb: int = option(1024, "--workspace", "tensorrt: builder workspace in MiB.")
    timing_cache: str | None = option(None, "--timing-cache", "tensorrt: timing cache file, reused and updated.")


def validate(config: TensorRTConfig) -> None:
    if config.precision not in PRECISIONS:
        raise InputError(f"unknown --precision {config.precision!r}; choose one of {', '.join(PRECISIONS)}")
    if not 1 <= config.min_batch <= config.opt_batch <= config.max_batch:
        raise InputError(f"batch range must satisfy 1 <= min <= opt <= max, got {config.min_batch}/{config.opt_batch}/{config.max_batch}")
    if config.workspace_mb < 1:
        raise InputError(f"--workspace must be at least 1 MiB, got {config.workspace_mb}")


def profile_shapes(input_spec, config: TensorRTConfig) -> dict[str, dict[str, list[int]]]:
    """min/opt/max shape per input: the batch dim spans the requested range; other symbolic dims
    (e.g. a sequence length) are refused here unless the spec fixes them."""
    shapes = {}
    for spec in input_spec:
        dims = {"min": [], "opt": [], "max": []}
        for dim in spec.shape:
            if dim == "batch":
                for key, size in (("min", config.min_batch), ("opt", config.opt_batch), ("max", config.max_batch)):
                    dims[key].append(size)
            elif isinstance(dim, int):
                for key in dims:
                    dims[key].append(dim)
            else:
                raise UnsupportedModelError(f"input {spec.name!r} has a dynamic dimension {dim!r}; export it with a fixed size for TensorRT")
        shapes[spec.name] = dims
    return shapes


def is_tensorrt_qdq(loaded) -> bool:
    """Whether `loaded` is the symmetric QDQ ONNX `aiopt quantize --backend tensorrt` writes."""
    return loaded.format == FORMAT_ONNX and (loaded.metadata.get("quantization") or {}).get("target") == "tensorrt-explicit-quantization"


def prepare_onnx(source: str | os.PathLike, work: Path, precision: str, trust_pickle: bool = False, input_spec=None) -> tuple[Path, dict]:
    """The ONNX TensorRT should build, carrying its precision. Returns (path, how it was made).
    INT8 takes the QDQ model of `aiopt quantize --backend tensorrt` as it is; making one from
    another model is quantization, composed above this layer (quantize/tensorrt.py)."""
    loaded = load_model(source, trust_pickle=trust_pickle, input_spec=input_spec)
    quantization = loaded.metadata.get("quantization") or {}
    if precision == "int8":
        if is_tensorrt_qdq(loaded):
            return Path(source), {"source": "QDQ model from aiopt quantize --backend tensorrt"}
        raise InputError(f"--precision int8 builds from the QDQ model of aiopt quantize --backend tensorrt; {source} is not one")
    if loaded.format == FORMAT_ONNX:
        if quantization:
            raise InputError(f"{source} is already quantized ({quantization.get('method')}); build it with --precision int8, or pass the FP32 model")
        fp32 = Path(source)
    else:
        fp32 = work / "fp32.onnx"
        export_onnx(source, fp32, force=True, trust_pickle=trust_pickle, input_spec=input_spec)
    if precision == "fp32":
        return fp32, {"source": "fp32 ONNX"}
    target = work / f"{precision}.onnx"
    kept = convert_float16(fp32, target) if precision == "fp16" else convert_bfloat16(fp32, target)
    return target, {"source": f"{precision} conversion", "kept_float32": kept}


# ---------------------------------------------------------------- sidecar

def make_sidecar(config: TensorRTConfig, onnx_path: Path, input_spec, output_names: list[str], tensorrt_version: str, gpu: dict, preparation: dict) -> dict:
    return {
        "format": "aiopt-tensorrt-engine",
        "format_version": 1,
        "tensorrt_version": tensorrt_version,
        "gpu": gpu,  # name and compute capability: an engine runs only where it was built
        "precision": config.precision,
        "sparse": config.sparse,
        "profile": profile_shapes(input_spec, config),
        "inputs": [s.to_dict() for s in input_spec],
        "outputs": output_names,
        "source_onnx_sha256": sha256_file(onnx_path),
        "build": {**asdict(config), **preparation},
    }


# ---------------------------------------------------------------- TensorRT itself (lazy)

def _network_flags(trt) -> int:
    """TensorRT 11 networks are always strongly typed; TensorRT 10 must be asked for it."""
    if int(trt.__version__.split(".")[0]) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def build_engine(onnx_path: Path, engine_path: Path, config: TensorRTConfig, input_spec) -> str:
    """Build and write a serialized engine (strongly typed, one optimisation profile); returns
    the TensorRT version. The timing cache is read from and written back to config.timing_cache."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UnsupportedModelError(f"TensorRT's ONNX parser rejected the model: {errors[:400]}")
    build = builder.create_builder_config()
    build.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mb << 20)
    if config.sparse:
        build.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    profile = builder.create_optimization_profile()
    for name, shapes in profile_shapes(input_spec, config).items():
        profile.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    build.add_optimization_profile(profile)
    cache_file = Path(config.timing_cache) if config.timing_cache else None
    cache = build.create_timing_cache(cache_file.read_bytes() if cache_file and cache_file.is_file() else b"")
    build.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, build)
    if serialized is None:
        raise UnsupportedModelError("TensorRT could not build an engine for this model (see the TensorRT log above)")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    if cache_file:
        write_bytes_atomic(cache_file, bytes(build.get_timing_cache().serialize()))
    return trt.__version__


def export_tensorrt(source: str | os.PathLike, output: str | os.PathLike, config: TensorRTConfig = TensorRTConfig(), force: bool = False,
                    trust_pickle: bool = False, input_spec=None, prepare: Callable = prepare_onnx) -> dict:
    """`aiopt export --format tensorrt`: prepare the ONNX, build the engine, write the sidecar.
    `prepare`: how the ONNX is made (prepare_onnx's signature; quantize/tensorrt.py passes one that
    quantizes a model for INT8).

    Without TensorRT (or a GPU) it stops with one line saying what to install and what it would
    have built, after checking everything that can be checked here."""
    validate(config)
    out = check_output_path(output, source, force=force)
    with tempfile.TemporaryDirectory(prefix="aiopt-tensorrt-") as work:
        onnx_path, preparation = prepare(source, Path(work), config.precision, trust_pickle, input_spec)
        prepared = load_model(onnx_path)
        spec = require_input_spec(prepared)
        shapes = profile_shapes(spec, config)
        plan = f"an engine in {config.precision} with batch {config.min_batch}..{config.max_batch} (opt {config.opt_batch}) for inputs {', '.join(shapes)}"
        try:
            import_tensorrt()
            gpu = current_gpu()
        except MissingDependencyError as exc:
            raise MissingDependencyError(f"{exc}; it would have built {plan}") from exc
        version = build_engine(onnx_path, out, config, spec)
        outputs = [o.name for o in onnx_value_specs(prepared.model.graph.output)]
        sidecar = make_sidecar(config, onnx_path, spec, outputs, version, gpu, preparation)
        sidecar["aiopt_metadata"] = prepared.metadata
        write_bytes_atomic(sidecar_path(out), (json.dumps(sidecar, indent=2) + "\n").encode())
    return {"path": str(out), "sidecar": str(sidecar_path(out)), **{k: sidecar[k] for k in ("tensorrt_version", "gpu", "precision", "profile")}}


# ---------------------------------------------------------------- Torch-TensorRT (second path)

def export_torch_tensorrt(source: str | os.PathLike, output: str | os.PathLike, config: TensorRTConfig = TensorRTConfig(),
                          force: bool = False, trust_pickle: bool = False, input_spec=None) -> dict:
    """`aiopt export --format torch-tensorrt`: an ExportedProgram whose subgraphs run as TensorRT
    engines (torch_tensorrt's dynamo path), with the same batch profile and precision rules.
    Its sidecar records what it was built for, like an engine's."""
    import torch

    validate(config)
    if config.precision == "int8":
        raise InputError("--format torch-tensorrt builds fp32/fp16/bf16; for INT8 use --format tensorrt (explicit QDQ quantization)")
    out = check_output_path(output, source, force=force)
    loaded = load_model(source, trust_pickle=trust_pickle, input_spec=input_spec)
    if not loaded.is_torch:
        raise InputError(f"{source} is ONNX; --format torch-tensorrt compiles PyTorch models (use --format tensorrt for ONNX)")
    spec = require_input_spec(loaded)
    shapes = profile_shapes(spec, config)
    plan = f"an ExportedProgram with TensorRT engines in {config.precision}, batch {config.min_batch}..{config.max_batch}"
    try:
        import torch_tensorrt
    except ImportError as exc:
        raise MissingDependencyError(f"Torch-TensorRT is not installed; pip install 'aiopt[torch-tensorrt]' on a machine with an NVIDIA GPU; it would have built {plan}") from exc
    gpu = current_gpu()
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[config.precision]
    inputs = [torch_tensorrt.Input(min_shape=shapes[s.name]["min"], opt_shape=shapes[s.name]["opt"], max_shape=shapes[s.name]["max"],
                                   dtype=getattr(torch, s.dtype), name=s.name) for s in spec]
    module = loaded.model.eval().cuda()
    compiled = torch_tensorrt.compile(module, ir="dynamo", inputs=inputs, enabled_precisions={dtype}, workspace_size=config.workspace_mb << 20,
                                      sparse_weights=config.sparse)
    example = [torch.randn(shapes[s.name]["opt"], device="cuda").to(getattr(torch, s.dtype)) for s in spec]
    with atomic_path(out) as tmp:
        torch_tensorrt.save(compiled, str(tmp), output_format="exported_program", inputs=example)
    sidecar = {"format": "aiopt-torch-tensorrt", "format_version": 1, "tensorrt_version": import_tensorrt().__version__,
               "torch_tensorrt_version": torch_tensorrt.__version__, "gpu": gpu, "precision": config.precision, "profile": shapes,
               "inputs": [s.to_dict() for s in spec], "aiopt_metadata": loaded.metadata}
    write_bytes_atomic(sidecar_path(out), (json.dumps(sidecar, indent=2) + "\n").encode())
    return {"path": str(out), "sidecar": str(sidecar_path(out)), "tensorrt_version": sidecar["tensorrt_version"], "gpu": gpu,
            "precision": config.precision, "profile": shapes}
