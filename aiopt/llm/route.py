"""Prefill on one runtime, decode on another: the prompt goes through the runtime that processes
it fastest (OpenVINO or ONNX Runtime, whose matrix kernels batch a prompt's tokens), and its KV
cache is handed to the runtime whose decode step reads low-bit weights fastest: llama.cpp, or an
ONNX graph on ONNX Runtime (ONNX Runtime GenAI's builder graph included: GenAI's own generator
takes no cache from outside, so aiopt's ONNX Runtime loop runs that graph). The by-batch routes
of aiopt quantize pair models by batch size; this pairs them by phase.

A route folder (aiopt quantize writes one when it wins) holds both models, the tokenizer and
aiopt.json with runtime "route" and, under "route", each phase's file, runtime and recipe.
What it costs: both models on disk and in memory. What it is judged by: the same quality floor,
scored through the handed-over cache (aiopt.llm.lm_quality.score decodes half of every window
through it), and TTFT timed with the hand-over inside it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from aiopt.errors import InputError, UnsupportedModelError
from aiopt.folder_io import METADATA_FILE, read_metadata
from aiopt.llm.causal_lm import Shape
from aiopt.llm.recipes_llamacpp import LlamaCppCausalLM
from aiopt.llm.recipes_openvino import open_ir

RUNTIME = "route"
PREFILL_RUNTIMES = ("onnxruntime", "openvino")  # runners that hand out their KV cache (kv_cache; a stateful IR through query_state)
DECODE_RUNTIMES = ("llamacpp", "onnxruntime", "onnxruntime-genai")  # candidates whose model takes a cache in (load_cache)


def phase_runtime(runtime: str) -> str:
    """The runtime that runs a candidate's model as a route phase: a GenAI builder graph runs on ONNX Runtime."""
    return "onnxruntime" if runtime == "onnxruntime-genai" else runtime


class RoutedCausalLM:
    """prefill() on `prefill_lm`, its present.* KV cache loaded into `decode_lm` (llama.cpp or ONNX
    Runtime); step() on `decode_lm` alone."""

    runtime = RUNTIME

    def __init__(self, prefill_lm, decode_lm):
        if not hasattr(prefill_lm, "kv_cache"):
            raise UnsupportedModelError(f"a {prefill_lm.runtime} runner does not hand out its KV cache; a route prefills on "
                                        f"{' or '.join(PREFILL_RUNTIMES)}")
        if not hasattr(decode_lm, "load_cache"):
            raise UnsupportedModelError(f"a {decode_lm.runtime} runner takes no KV cache in; a route decodes on llama.cpp or ONNX Runtime")
        self.prefill_lm, self.decode_lm, self.shape = prefill_lm, decode_lm, decode_lm.shape
        self.last_logits_only = getattr(prefill_lm, "last_logits_only", False)

    @property
    def max_length(self) -> int | None:
        return getattr(self.decode_lm, "max_length", None)

    @max_length.setter
    def max_length(self, tokens: int | None) -> None:  # generate_ids: the decoder sizes its cache buffer by it
        if hasattr(self.decode_lm, "max_length"):
            self.decode_lm.max_length = tokens

    def prefill(self, ids: np.ndarray, last_only: bool = False):
        logits, state = self.prefill_lm.prefill(ids, last_only)
        return logits, self.decode_lm.load_cache(*self.prefill_lm.kv_cache(state))

    def step(self, tokens: np.ndarray, state):
        return self.decode_lm.step(tokens, state)


def open_phase(folder: Path, phase: dict, shape: Shape, threads: int | None):
    """The runner for one phase of a route folder: {"runtime", "file", "inference_precision"}."""
    file = folder / Path(phase["file"]).name  # a name inside the folder, never a path out of it
    if phase["runtime"] == "llamacpp":
        return LlamaCppCausalLM(file, shape, threads)
    if phase["runtime"] == "openvino":
        return open_ir(file, shape, threads, phase.get("inference_precision", "f32"))
    if phase["runtime"] == "onnxruntime":
        from aiopt.llm.runners import OrtCausalLM  # torch, which `aiopt --help` (it imports quantize, hence this module) must not load

        return OrtCausalLM(file, shape, threads)
    raise UnsupportedModelError(f"{folder / METADATA_FILE} names a route phase on {phase['runtime']!r}, which aiopt does not run")


def is_route(path) -> bool:
    path = Path(path)
    return path.is_dir() and read_metadata(path).get("runtime") == RUNTIME


def open_route(path, threads: int | None = None, runtime: str | None = None):
    """(runner, tokenizer folder, metadata) for a route folder; --runtime naming one phase's runtime
    runs that model alone (e.g. llamacpp: the GGUF for both phases)."""
    folder = Path(path)
    metadata = read_metadata(folder)
    route, kv = metadata.get("route"), metadata.get("kv_cache")
    prefill, decode = (route.get("prefill"), route.get("decode")) if isinstance(route, dict) else (None, None)
    # aiopt.json is read from a folder that may come from elsewhere: each phase is checked before any file is opened
    if not kv or not all(isinstance(p, dict) and isinstance(p.get("runtime"), str) and isinstance(p.get("file"), str) for p in (prefill, decode)):
        raise UnsupportedModelError(f"{folder / METADATA_FILE} says runtime route but lacks its route (prefill and decode, each a runtime "
                                    "and a file) or kv_cache; re-run aiopt quantize")
    shape = Shape.from_kv_cache(kv, folder / METADATA_FILE)
    if runtime not in (None, RUNTIME):
        phases = {phase["runtime"]: phase for phase in (prefill, decode)}
        if runtime not in phases:
            raise InputError(f"{folder} routes prefill to {prefill['runtime']} and decode to {decode['runtime']}; "
                             f"choose --runtime {RUNTIME} (both) or one of them, not {runtime}")
        return open_phase(folder, phases[runtime], shape, threads), folder, metadata
    return RoutedCausalLM(open_phase(folder, prefill, shape, threads), open_phase(folder, decode, shape, threads)), folder, metadata
