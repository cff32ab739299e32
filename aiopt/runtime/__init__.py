"""One way to load and run any artifact: `aiopt.runtime.load(path) -> Runner`.

The backend follows from the artifact's format (ONNX -> onnxruntime, TensorRT engine ->
tensorrt, anything PyTorch -> torch); the caller may override it where that makes sense.
"""
from __future__ import annotations

import os
from typing import Callable

from aiopt.errors import InputError
from aiopt.runtime.base import Runner
from aiopt.specs import TensorSpec

BACKENDS = ("torch", "onnxruntime", "tensorrt")


def _torch_runner(loaded, spec, device, threads):
    from aiopt.artifacts import output_spec
    from aiopt.runtime.torch_backend import TorchRunner

    if loaded.format == "onnx":
        raise InputError(f"{loaded.path} is an ONNX model; run it with --backend onnxruntime (or tensorrt)")
    if threads:
        import torch

        torch.set_num_threads(threads)
    return TorchRunner(loaded.model, spec, [o.name for o in output_spec(loaded)], device, str(loaded.path))


def _onnxruntime_runner(loaded, spec, device, threads):
    from aiopt.runtime.onnxruntime_backend import OnnxRuntimeRunner

    if loaded.format != "onnx":
        raise InputError(f"{loaded.path} is a PyTorch artifact; export it first (aiopt export {loaded.path} --format onnx) or use --backend torch")
    return OnnxRuntimeRunner(str(loaded.path), spec, device, str(loaded.path), threads)


_FACTORIES: dict[str, Callable] = {"torch": _torch_runner, "onnxruntime": _onnxruntime_runner}


def natural_backend(path: str | os.PathLike) -> str:
    from aiopt.export.tensorrt import is_engine

    if is_engine(path):
        return "tensorrt"
    from aiopt.artifacts import load_model

    return "onnxruntime" if load_model(path).format == "onnx" else "torch"


def load(
    path: str | os.PathLike,
    device: str = "cpu",
    backend: str | None = None,
    trust_pickle: bool = False,
    input_spec: list[TensorSpec] | None = None,
    threads: int | None = None,
) -> Runner:
    """Load an artifact and return a Runner on `device` ("cpu" or "cuda")."""
    from aiopt.export.tensorrt import is_engine

    if backend is not None and backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if is_engine(path):
        if backend not in (None, "tensorrt"):
            raise InputError(f"{path} is a TensorRT engine; it runs only with --backend tensorrt")
        from aiopt.export.tensorrt import TensorRTRunner

        return TensorRTRunner(path, device=device)
    if backend == "tensorrt":
        raise InputError(f"{path} is not a TensorRT engine; build one with: aiopt export {path} --format tensorrt")
    from aiopt.artifacts import load_model, require_input_spec

    loaded = load_model(path, trust_pickle=trust_pickle, input_spec=input_spec)
    spec = require_input_spec(loaded)
    backend = backend or ("onnxruntime" if loaded.format == "onnx" else "torch")
    return _FACTORIES[backend](loaded, spec, device, threads)


__all__ = ["Runner", "load", "BACKENDS", "natural_backend"]
