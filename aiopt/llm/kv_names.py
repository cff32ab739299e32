"""The names a causal-LM ONNX export with a KV cache uses, shared by the exporter
(aiopt.llm.export_kv) and the runners (aiopt.llm.runners) so neither imports the other:
the convention ONNX Runtime GenAI and Optimum use."""
from __future__ import annotations

ONNX_FILE = "model.onnx"
LOGITS_START = "logits_start"  # optional input: the first position whose logits are computed (default 0: all)


def past_names(layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


def present_names(layers: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
