"""Open any generative artifact as a runner (aiopt.llm.runners): a causal-LM Hugging Face folder
on torch, an aiopt KV-cache export (or its model.onnx) on ONNX Runtime, OpenVINO or ONNX Runtime
GenAI, an OpenVINO IR or GGUF file that aiopt quantize wrote, or its route folder (both). One place that dispatches on the
artifact, so the runners themselves know nothing of the recipes that write artifacts.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from aiopt.artifacts import METADATA_KEY
from aiopt.artifacts.hf import is_hf_folder
from aiopt.errors import InputError, UnsupportedModelError, first_line
from aiopt.llm import recipes_llamacpp, recipes_openvino, route  # artifacts aiopt quantize writes, or found elsewhere
from aiopt.llm.causal_lm import Shape, load_causal_lm
from aiopt.lazy import optional_import
from aiopt.folder_io import METADATA_FILE
from aiopt.llm.kv_names import ONNX_FILE
from aiopt.llm.openvino_stateful import OpenVINOStatefulCausalLM
from aiopt.llm.runners import GenAICausalLM, OpenVINOCausalLM, OrtCausalLM, TorchCausalLM

RUNTIMES = ("onnxruntime", "openvino", "openvino-stateful", "onnxruntime-genai")
ONNX_RUNNERS = {"onnxruntime": OrtCausalLM, "openvino": OpenVINOCausalLM, "openvino-stateful": OpenVINOStatefulCausalLM}


def open_causal_lm(artifact, threads: int | None = None, runtime: str | None = None):
    """(runner, tokenizer folder, metadata) for a causal-LM folder, an aiopt KV export folder or its model.onnx."""
    path = Path(artifact)
    if not path.exists():
        raise InputError(f"{path} does not exist; pass a causal-LM Hugging Face folder or an ONNX exported by aiopt export")
    if path.is_dir() and is_hf_folder(path):
        if runtime not in (None, "torch"):
            raise InputError(f"a Hugging Face folder runs on torch; export it (aiopt export {path} --format onnx) for --runtime {runtime}")
        if threads:
            torch.set_num_threads(threads)
        model, config = load_causal_lm(path)
        meta_file = path / METADATA_FILE
        metadata = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
        return TorchCausalLM(model, Shape.from_config(config)), path, {**metadata, "config": config}
    if route.is_route(path):  # before the IR and GGUF checks: a route folder holds a GGUF and maybe an IR
        return route.open_route(path, threads, runtime)
    if recipes_openvino.is_ir(path):
        return recipes_openvino.open_ir_artifact(path, threads, runtime)
    if recipes_llamacpp.is_gguf(path):
        return recipes_llamacpp.open_gguf(path, threads, runtime)
    onnx_path = path / ONNX_FILE if path.is_dir() else path
    if not onnx_path.is_file() or onnx_path.suffix != ".onnx":
        raise InputError(f"{path} is neither a Hugging Face folder (config.json) nor an ONNX model; pass one of them")
    metadata = onnx_metadata(onnx_path)
    kv = metadata.get("kv_cache")
    if not kv:
        names = _onnx_input_names(onnx_path)
        raise UnsupportedModelError(f"{onnx_path} has no past_key_values inputs (its inputs: {', '.join(names)}), so it cannot generate "
                                    "with a KV cache; export the model folder with: aiopt export FOLDER --format onnx -o OUT")
    shape = Shape.from_kv_cache(kv, onnx_path)
    if runtime is None and metadata.get("step") == "quantize" and metadata.get("runtime") in RUNTIMES:
        runtime = metadata["runtime"]  # the runtime aiopt quantize measured it on
    if runtime not in (None, *RUNTIMES):
        raise InputError(f"--runtime {runtime!r} does not run an ONNX causal LM; choose {' or '.join(RUNTIMES)}")
    if runtime in ("openvino", "openvino-stateful") and "genai" in str(metadata.get("exporter")):
        # its com.microsoft GroupQueryAttention compiles on OpenVINO but fails past batch 1 (OpenVINO 2026.4)
        raise UnsupportedModelError(f"{onnx_path} was written by ONNX Runtime GenAI's builder, whose GroupQueryAttention graph OpenVINO "
                                    "does not run correctly; export with --exporter torch for OpenVINO")
    if runtime == "onnxruntime-genai":
        if not (onnx_path.parent / "genai_config.json").is_file():
            raise UnsupportedModelError(f"{onnx_path.parent} has no genai_config.json; export with --exporter genai for the ONNX Runtime GenAI runtime")
        optional_import("onnxruntime_genai", "--runtime onnxruntime-genai", "ONNX Runtime GenAI")
        return GenAICausalLM(onnx_path.parent, shape, threads), onnx_path.parent, metadata
    return ONNX_RUNNERS[runtime or "onnxruntime"](onnx_path, shape, threads), onnx_path.parent, metadata


def onnx_metadata(onnx_path: Path) -> dict:
    import onnx

    try:
        model = onnx.load_model(str(onnx_path), load_external_data=False)
    except Exception as exc:
        raise InputError(f"{onnx_path} is not a readable ONNX model ({first_line(exc)})") from exc
    props = {p.key: p.value for p in model.metadata_props}
    try:
        return json.loads(props.get(METADATA_KEY) or "{}")
    except ValueError:
        return {}


def _onnx_input_names(onnx_path: Path) -> list[str]:
    import onnx

    model = onnx.load_model(str(onnx_path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]
