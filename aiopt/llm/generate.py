"""Generation over any causal-LM runner (aiopt.llm.runners): greedy or sampled, streamed.

Greedy picks the highest logit, exactly what transformers' generate(do_sample=False) does, so
both give the same tokens for the same model. Sampling draws from softmax(logits / T) with a
seeded numpy generator: the same seed gives the same text.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from aiopt.artifacts.hf import load_tokenizer
from aiopt.errors import InputError
from aiopt.options import option


@dataclass(frozen=True)
class GenerateConfig:
    max_new_tokens: int = option(64, ("--max-new-tokens", "-n"), "Tokens to generate, at least 1 (fewer if the model ends the text).")
    greedy: bool = option(True, "--greedy/--sample", "Most likely token each step (default), or sample with --temperature and --seed.")
    # the command's None: not given (a --temperature given implies --sample)
    temperature: float = option(1.0, "--temperature", "Sampling temperature (> 0; default 1.0 with --sample); implies --sample.", cli_default=None)
    seed: int = option(0, "--seed", "Seed for sampling: the same seed gives the same text.")
    stop_at_eos: bool = True

    def check(self) -> None:
        if self.max_new_tokens < 1:
            raise InputError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if not self.greedy and not self.temperature > 0:
            raise InputError(f"--temperature must be above 0, got {self.temperature}; use --greedy for the most likely tokens")


@dataclass(frozen=True)
class GenerateRuntime:
    """Where `aiopt generate` (generate_text) runs the artifact."""
    threads: int | None = option(None, "--threads", "Threads for the runtime (default: all cores).")
    runtime: str | None = option(None, "--runtime", "For an ONNX export: onnxruntime (default), openvino, openvino-stateful (the KV cache "
                                 "kept in OpenVINO's state), or onnxruntime-genai (an --exporter genai export).")


@dataclass
class Generation:
    prompt_tokens: int
    tokens: list[int] = field(default_factory=list)
    ttft_s: float = 0.0
    decode_s: float = 0.0
    stopped_at_eos: bool = False

    def decode_tokens_per_s(self) -> float | None:
        steps = len(self.tokens) - 1  # the first token comes with the prefill
        return steps / self.decode_s if steps > 0 and self.decode_s > 0 else None


def check_fits(prompt_tokens: int, max_new_tokens: int, context: int | None) -> None:
    if prompt_tokens < 1:
        raise InputError("the prompt is empty after tokenization; pass some text with --prompt")
    if context is None:
        return
    if prompt_tokens > context:
        raise InputError(f"the prompt has {prompt_tokens} tokens, longer than the model's context of {context}; shorten it")
    if prompt_tokens + max_new_tokens > context:
        raise InputError(f"the prompt's {prompt_tokens} tokens plus --max-new-tokens {max_new_tokens} exceed the model's context of "
                         f"{context}; ask for at most {context - prompt_tokens} new tokens")


def generate_ids(lm, prompt: np.ndarray, config: GenerateConfig, eos_token_id: int | list[int] | None = None,
                 on_token: Callable[[int], None] | None = None) -> Generation:
    """Generate from a (1, prompt) or (batch, prompt) array of ids; batch rows run in lock-step
    (benchmarks); `on_token` sees row 0's tokens as they come."""
    config.check()
    prompt = np.atleast_2d(np.asarray(prompt, dtype=np.int64))
    check_fits(prompt.shape[1], config.max_new_tokens, lm.shape.context_length)
    eos = set(eos_token_id if isinstance(eos_token_id, list) else [] if eos_token_id is None else [eos_token_id])
    rng = np.random.default_rng(config.seed)
    if hasattr(lm, "max_length"):  # a runtime that reserves its KV cache up front
        lm.max_length = prompt.shape[1] + config.max_new_tokens
    result = Generation(prompt_tokens=int(prompt.shape[1]))
    start = time.perf_counter()
    logits, state = lm.prefill(prompt, last_only=True)
    for index in range(config.max_new_tokens):
        token = _choose(logits[:, -1], config, rng)
        if index == 0:
            result.ttft_s = time.perf_counter() - start
            start = time.perf_counter()
        result.tokens.append(int(token[0]))
        if on_token:
            on_token(int(token[0]))
        if config.stop_at_eos and int(token[0]) in eos:
            result.stopped_at_eos = True
            break
        if index + 1 < config.max_new_tokens:
            logits, state = lm.step(token[:, None], state)
    result.decode_s = time.perf_counter() - start
    return result


def _choose(logits: np.ndarray, config: GenerateConfig, rng: np.random.Generator) -> np.ndarray:
    if config.greedy:
        return logits.argmax(-1).astype(np.int64)
    scaled = logits.astype(np.float64) / config.temperature
    scaled -= scaled.max(-1, keepdims=True)
    probabilities = np.exp(scaled)
    probabilities /= probabilities.sum(-1, keepdims=True)
    return np.array([rng.choice(len(row), p=row) for row in probabilities], dtype=np.int64)


class TextStream:
    """Turns tokens into text as they come: decodes the whole answer each time and hands on what is
    new, so a character split across byte-level tokens is never printed half."""

    def __init__(self, tokenizer, write: Callable[[str], None]):
        self.tokenizer, self.write, self.ids, self.shown = tokenizer, write, [], ""

    def __call__(self, token: int) -> None:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its other bytes
            return
        if text.startswith(self.shown):
            self.write(text[len(self.shown):])
        self.shown = text


def generate_text(artifact, prompt: str, config: GenerateConfig, write: Callable[[str], None] | None = None,
                  threads: int | None = None, runtime: str | None = None) -> dict:
    """Generate from any generative artifact; `write` receives the new text as it comes."""
    from aiopt.llm.open_artifact import open_causal_lm  # imports torch, which `aiopt --help` (it imports this module) must not load

    config.check()  # before any loading: a bad --max-new-tokens fails at once
    lm, tokenizer_folder, metadata = open_causal_lm(artifact, threads=threads, runtime=runtime)
    tokenizer = load_tokenizer(tokenizer_folder)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="np")["input_ids"]
    eos = metadata.get("eos_token_id", (metadata.get("config") or {}).get("eos_token_id"))
    if eos is None:
        eos = tokenizer.eos_token_id
    stream = TextStream(tokenizer, write) if write else None
    result = generate_ids(lm, ids, config, eos, stream)
    return {"artifact": str(artifact), "runtime": lm.runtime, "prompt_tokens": result.prompt_tokens, "new_tokens": len(result.tokens),
            "tokens": result.tokens, "text": tokenizer.decode(result.tokens, skip_special_tokens=True), "stopped_at_eos": result.stopped_at_eos,
            "ttft_ms": result.ttft_s * 1000, "decode_tokens_per_s": result.decode_tokens_per_s(),
            "mode": "greedy" if config.greedy else f"sampled (temperature {config.temperature}, seed {config.seed})"}
