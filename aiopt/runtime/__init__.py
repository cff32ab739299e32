"""One way to load and run any artifact: `aiopt.runtime.load(path) -> Runner`.

The backend follows from the artifact's format (ONNX -> onnxruntime, anything PyTorch ->
torch). TensorRT engines join as a third backend with the export issue's engine builder.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path
from typing import Callable

from aiopt.artifacts import load_model, output_spec, require_input_spec, route_path
from aiopt.errors import InputError, MissingDependencyError
from aiopt.runtime.base import Runner, capped_threads
from aiopt.runtime.buckets import REEXPORT_HINT, buckets_of
from aiopt.runtime.cuda_graph import CudaGraphRunner
from aiopt.runtime.dispatch import BatchDispatchRunner
from aiopt.runtime.onnxruntime_backend import OnnxRuntimeRunner
from aiopt.runtime.openvino_backend import OpenVinoRunner
from aiopt.runtime.tensorrt_backend import TensorRTRunner
from aiopt.runtime.torch_backend import TorchRunner
from aiopt.runtime.trim_padding import PaddingTrimRunner, wants_trimming
from aiopt.specs import TensorSpec

BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def _torch_runner(loaded, spec, device, threads):
    if loaded.format == "onnx":
        raise InputError(f"{loaded.path} is an ONNX model; run it with --backend onnxruntime (or openvino, tensorrt)")
    if threads:
        import torch

        torch.set_num_threads(threads)
    names = [o.name for o in output_spec(loaded)]
    buckets = buckets_of(loaded.metadata)
    if buckets and str(device).startswith("cuda"):  # a torch-cuda artifact: compiled, one CUDA graph per bucket
        return CudaGraphRunner(loaded.model, spec, names, device, buckets, str(loaded.path))
    runner = TorchRunner(loaded.model, spec, names, device, str(loaded.path))
    if buckets:  # elsewhere it runs eagerly, within the batch range it was exported for
        runner.batch_range = (1, buckets[-1])
        runner.batch_range_hint = REEXPORT_HINT
    return runner


def _require_onnx(loaded) -> None:
    if loaded.format != "onnx":
        raise InputError(f"{loaded.path} is a PyTorch artifact; export it first (aiopt export {loaded.path} --format onnx) or use --backend torch")


def _onnxruntime_runner(loaded, spec, device, threads):
    _require_onnx(loaded)
    return OnnxRuntimeRunner(str(loaded.path), spec, device, str(loaded.path), threads)


def _openvino_runner(loaded, spec, device, threads):
    _require_onnx(loaded)
    precision = (loaded.metadata.get("serving") or {}).get("inference_precision", "f32")
    return OpenVinoRunner(str(loaded.path), spec, device, str(loaded.path), threads, precision)


def _default_backend(loaded) -> str:
    """ONNX runs on ONNX Runtime unless its metadata says it was made for OpenVINO (and OpenVINO is
    installed: the same file runs on ONNX Runtime too); anything else on PyTorch."""
    if loaded.format != "onnx":
        return "torch"
    if loaded.metadata.get("runtime") == "openvino" and importlib.util.find_spec("openvino") is not None:
        return "openvino"
    return "onnxruntime"


def _has_all(rule: list[dict]) -> bool:
    """Whether every runtime a by-batch artifact names is installed (else it runs on its first)."""
    modules = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
    return all(e["runtime"] in modules and importlib.util.find_spec(modules[e["runtime"]]) is not None for e in rule)


def _route_runner(loaded, spec, route: dict, device, threads, work_routes: bool = False):
    """The Runner of one by-batch route: its runtime, on the main file or on the companion file
    it names, with its own serving settings (e.g. OpenVINO's inference precision). `work_routes`:
    the route names its file by `path` (a candidate in this run's work folder, never read from an artifact)."""
    if "serving" in route or route.get("file") or work_routes:
        metadata = {**loaded.metadata, "serving": route.get("serving", {})}
        path = Path(route["path"]) if work_routes else route_path(loaded.path, route)
        loaded = dataclasses.replace(loaded, path=path, metadata=metadata)
    return _FACTORIES[route["runtime"]](loaded, spec, device, capped_threads(threads, route.get("serving") or {}))


def _tensorrt_runner(path, backend, device):
    """Engines carry no aiopt metadata of their own: the sidecar describes them, and is checked first."""
    if not str(path).endswith(ENGINE_SUFFIXES):
        raise InputError(f"{path} is not a TensorRT engine; build one with aiopt export {path} --format tensorrt (engines end in .engine or .plan)")
    if backend not in (None, "tensorrt"):
        raise InputError(f"{path} is a TensorRT engine; run it with --backend tensorrt")
    if not str(device).startswith("cuda"):
        raise MissingDependencyError(f"TensorRT engines run on CUDA; pass --device cuda (asked for {device})")
    return TensorRTRunner(str(path), device)


_FACTORIES: dict[str, Callable] = {"torch": _torch_runner, "onnxruntime": _onnxruntime_runner, "openvino": _openvino_runner}


def load(
    path: str | os.PathLike,
    device: str = "cpu",
    backend: str | None = None,
    trust_pickle: bool = False,
    input_spec: list[TensorSpec] | None = None,
    threads: int | None = None,
) -> Runner:
    """Load an artifact and return a Runner on `device` ("cpu" or "cuda")."""
    if backend is not None and backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "tensorrt" or str(path).endswith(ENGINE_SUFFIXES):
        return _tensorrt_runner(path, backend, device)
    return runner_for(load_model(path, trust_pickle=trust_pickle, input_spec=input_spec), device, backend, threads)


def runner_for(loaded, device: str = "cpu", backend: str | None = None, threads: int | None = None,
               trim_padding: bool | None = None, work_routes: bool = False) -> Runner:
    """A Runner for an artifact already loaded with `aiopt.artifacts.load_model` (not an engine),
    or described as one (a quantize candidate: quantize/candidates.py `Candidate.as_loaded`).

    `trim_padding`: wrap it in a PaddingTrimRunner (None: when the artifact's metadata asks for it).
    `work_routes`: by-batch routes name their files by `path` (a candidate still in its work folder)."""
    if backend is not None and backend not in _FACTORIES:
        raise InputError(f"backend {backend!r} cannot run {loaded.path}; choose one of {', '.join(_FACTORIES)}")
    spec = require_input_spec(loaded)
    if backend is None and loaded.metadata.get("dispatch") and _has_all(loaded.metadata["dispatch"]):
        routes = [(route["max_batch"], _route_runner(loaded, spec, route, device, threads, work_routes)) for route in loaded.metadata["dispatch"]]
        runner = BatchDispatchRunner(routes, str(loaded.path))
    else:
        backend = backend or _default_backend(loaded)
        runner = _FACTORIES[backend](loaded, spec, device, capped_threads(threads, loaded.metadata.get("serving") or {}))
    if trim_padding or (trim_padding is None and wants_trimming(loaded.metadata)):
        runner = PaddingTrimRunner(runner, output_spec(loaded))
    return runner


__all__ = ["Runner", "load", "runner_for", "BACKENDS"]
