"""What loading a TensorRT engine needs, below the builders (export/tensorrt.py): the sidecar
aiopt writes beside every engine, checked against this machine's TensorRT and GPU before the
engine is deserialised, and TensorRT itself, imported lazily."""
from __future__ import annotations

import json
import os
from pathlib import Path

from aiopt.errors import InputError, MissingDependencyError, UnsupportedModelError

SIDECAR_SUFFIX = ".json"
INSTALL_HINT = "pip install 'aiopt[tensorrt]' on a machine with an NVIDIA GPU"


def sidecar_path(engine: str | os.PathLike) -> Path:
    return Path(str(engine) + SIDECAR_SUFFIX)


def check_sidecar(engine: str | os.PathLike, tensorrt_version: str, gpu: dict) -> dict:
    """Refuse an engine built for another TensorRT or GPU, before deserialising it."""
    path = sidecar_path(engine)
    try:
        sidecar = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{engine} has no sidecar {path.name}; engines are only loaded with the sidecar aiopt writes beside them (rebuild with aiopt export --format tensorrt)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"the sidecar {path} is not valid JSON ({exc}); rebuild the engine with aiopt export --format tensorrt") from exc
    if not isinstance(sidecar, dict) or sidecar.get("format") != "aiopt-tensorrt-engine":
        raise InputError(f"{path} is not an aiopt engine sidecar; rebuild the engine with aiopt export --format tensorrt")
    problems = []
    if sidecar.get("tensorrt_version") != tensorrt_version:
        problems.append(f"built with TensorRT {sidecar.get('tensorrt_version')}, this machine has {tensorrt_version}")
    built_gpu = sidecar.get("gpu") or {}
    if built_gpu.get("compute_capability") != gpu.get("compute_capability") or built_gpu.get("name") != gpu.get("name"):
        problems.append(f"built for {built_gpu.get('name')} (sm {built_gpu.get('compute_capability')}), this GPU is {gpu.get('name')} (sm {gpu.get('compute_capability')})")
    if problems:
        raise UnsupportedModelError(f"{engine} cannot run here: {'; '.join(problems)}; rebuild it on this machine from its ONNX with aiopt export --format tensorrt")
    return sidecar


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        raise MissingDependencyError(f"TensorRT is not installed; {INSTALL_HINT}") from exc
    return tensorrt


def current_gpu() -> dict:
    import torch

    if not torch.cuda.is_available():
        raise MissingDependencyError("TensorRT engines need an NVIDIA GPU and PyTorch with CUDA; none is visible here")
    major, minor = torch.cuda.get_device_capability(0)
    return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
