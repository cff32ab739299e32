"""The machine block every report carries: CPU, GPU, library versions, the command."""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import time

from aiopt.hardware import detect_cpu

_PACKAGES = ("torch", "onnxruntime", "onnx", "tensorrt", "torch-pruning", "numpy")


def describe_machine() -> dict:
    cpu = detect_cpu()
    block = {
        "cpu": cpu.model,
        "cores": available_cores(),
        "gpu": _gpu(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }
    for package in _PACKAGES:
        block[package.replace("-", "_")] = _version(package)
    block["id"] = machine_id(block)
    return block


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# After a run, runtimes keep their worker threads spinning for a while (ONNX Runtime's intra-op
# pool, OpenMP's wait policy under torch, ggml's threadpool): the next runtime timed at once shares
# the cores with them. Measured on gpt:base, 2 cores, 2026-12-06: llama.cpp Q8_0 timed right after
# ONNX Runtime GenAI decoded 2,333 tok/s; after a 0.3 s pause, 4,492 (benchmarks/llm_peers.py rounds).
SETTLE_S = 0.3


def settle() -> None:
    """Let the previous runtime's spinning threads go idle before the next one is timed."""
    time.sleep(SETTLE_S)


def machine_id(block: dict) -> str:
    """A file-name-safe name for the machine kind: GPU name if any, else the CPU's."""
    name = (block.get("gpu") or {}).get("name") or block.get("cpu") or "unknown"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:48] or "unknown"


def _version(package: str) -> str | None:
    import importlib.metadata  # here: it pulls email and csv, ~10 ms of `aiopt --help` (bench/measure imports this module)

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gpu() -> dict | None:
    """The GPU PyTorch sees (name, capability, CUDA) plus the driver from nvidia-smi; None on CPU machines.

    torch is imported only if already loaded or importable cheaply enough for a bench run."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}", "cuda": torch.version.cuda,
            "driver": _driver_version(), "count": torch.cuda.device_count()}


def _driver_version() -> str | None:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], check=False, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
