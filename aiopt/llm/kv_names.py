"""The names a causal-LM ONNX export with a KV cache uses, shared by the exporter
(aiopt.llm.export_kv) and the runners (aiopt.llm.runners) so neither imports the other:
the convention ONNX Runtime GenAI and Optimum use."""
from __future__ import annotations

import numpy as np

ONNX_FILE = "model.onnx"
LOGITS_START = "logits_start"  # optional input: the first position whose logits are computed (default 0: all)


def past_names(layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


def present_names(layers: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


def last_position_logits_only(dims) -> bool:
    """Whether a graph's `logits` output, of these dimensions (ints or names), has its sequence
    dimension fixed at 1: a prefill computes the last position's logits only (the GenAI model
    builder's prune_lm_head), so the positions before it are scored by decoding."""
    return len(dims) == 3 and dims[1] == 1


def token_feed(ids: np.ndarray, past: int, takes_mask: bool, takes_positions: bool) -> dict:
    """input_ids, and the attention mask and positions when the graph takes them, for `ids`
    (batch, length) following `past` cached tokens."""
    batch, length = ids.shape
    feed = {"input_ids": np.ascontiguousarray(ids, dtype=np.int64)}
    if takes_mask:
        feed["attention_mask"] = np.ones((batch, past + length), dtype=np.int64)
    if takes_positions:
        feed["position_ids"] = np.broadcast_to(np.arange(past, past + length, dtype=np.int64), (batch, length)).copy()
    return feed
