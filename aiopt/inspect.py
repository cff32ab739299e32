"""What an artifact is: format, size, parameters, input/output spec, metadata and lineage."""
from __future__ import annotations

import os
from dataclasses import dataclass

from aiopt.artifacts import FORMAT_HF, artifact_sha256, artifact_size, count_parameters, load_model, output_spec
from aiopt.llm.causal_lm import describe_causal_lm, is_causal_lm_folder
from aiopt.options import option
from aiopt.specs import TensorSpec, specs_to_json


@dataclass(frozen=True)
class InspectConfig:
    kv_tokens: int | None = option(None, "--kv-tokens", "Causal LMs: tokens the KV-cache memory is given for (default: the context length).")


def inspect_artifact(path: str | os.PathLike, trust_pickle: bool = False, input_spec: list[TensorSpec] | None = None,
                     kv_tokens: int | None = None) -> dict:
    loaded = load_model(path, trust_pickle=trust_pickle, input_spec=input_spec, verify_integrity=False)  # shown, not refused
    metadata = loaded.metadata
    return {
        "path": str(loaded.path),
        "format": loaded.format,
        "size_bytes": artifact_size(loaded.path),
        "sha256": artifact_sha256(loaded.path),
        "integrity": loaded.integrity,  # ONNX: the checksum aiopt recorded ok / mismatch / absent; None for other formats
        "params": count_parameters(loaded),
        "architecture": metadata.get("architecture"),
        "inputs": specs_to_json(loaded.input_spec),
        "outputs": specs_to_json(output_spec(loaded)),
        "accuracy": (metadata.get("metrics") or {}).get("accuracy"),
        "dataset": (metadata.get("dataset") or {}).get("name"),
        "lineage": metadata.get("lineage", []),
        "metadata": metadata,
        "causal_lm": _causal_lm(loaded, kv_tokens),
    }


def _causal_lm(loaded, kv_tokens: int | None = None) -> dict | None:
    """Layers, heads, KV heads, context, vocabulary and memory of a causal-LM folder (None otherwise)."""
    if loaded.format != FORMAT_HF:
        return None

    return describe_causal_lm(loaded.path, kv_tokens) if is_causal_lm_folder(loaded.path) else None
