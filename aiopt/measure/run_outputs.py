"""`aiopt run`: an artifact run over a data file, its outputs written to another. Above the
runtime layer: it reads data files (aiopt.evaluate) and loads any Runner (aiopt.runtime)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from aiopt.artifacts import load_model
from aiopt.evaluate import eval_data, run_batches
from aiopt.fileio import atomic_path, check_output_path
from aiopt.options import DEVICE_HELP, SEQ_LEN_HELP, option
from aiopt.runtime import ENGINE_SUFFIXES, load, runner_for
from aiopt.specs import TensorSpec


@dataclass(frozen=True)
class RunConfig:
    """Where `aiopt run` runs an artifact (run_npz's settings; a causal LM reads `backend` alone)."""
    backend: str | None = option(None, "--backend", "torch, onnxruntime or openvino (default: the artifact's own).")
    device: str = option("cpu", "--device", DEVICE_HELP)
    seq_len: int = option(128, "--seq-len", SEQ_LEN_HELP)


def run_npz(path: str | os.PathLike, data: str | os.PathLike, output: str | os.PathLike, device: str = "cpu",
            backend: str | None = None, force: bool = False, trust_pickle: bool = False,
            input_spec: list[TensorSpec] | None = None, batch_size: int = 256, seq_len: int = 128) -> dict:
    """Run an artifact over the inputs in `data` (.npz, or .txt tokenized at `seq_len`) and write its
    outputs to `output` (.npz)."""
    out = check_output_path(output, path, data, force=force)
    if backend == "tensorrt" or str(path).endswith(ENGINE_SUFFIXES):
        runner, metadata = load(path, device=device, backend=backend), None
    else:  # loaded once: the metadata names the tokenizer a text file needs
        loaded = load_model(path, trust_pickle=trust_pickle, input_spec=input_spec)
        runner, metadata = runner_for(loaded, device, backend), loaded.metadata
    inputs = eval_data(runner.input_spec, metadata, data, seq_len=seq_len)
    outputs = dict(zip(runner.output_names, run_batches(runner, inputs, batch_size)))
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **outputs)
    return {"path": str(out), "backend": runner.backend, "device": runner.device, "samples": len(inputs),
            "outputs": {k: {"shape": list(v.shape), "dtype": v.dtype.name} for k, v in outputs.items()}, "notes": list(inputs.notes)}
