"""Text files as model inputs: one sample per non-empty line, tokenized with the model's own
Hugging Face tokenizer (the folder its metadata records) and padded to a fixed length.

Used wherever a data file is read (`--data`, `--calibration`, `aiopt run --input`) when the path
ends in `.txt`. A line longer than the length is truncated and counted in a note, not refused:
servers truncate the same way.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from aiopt.artifacts.hf import load_tokenizer
from aiopt.errors import InputError

DEFAULT_SEQ_LEN = 128
TEXT_SUFFIXES = (".txt",)


def is_text_file(path: str | os.PathLike | None) -> bool:
    return path is not None and str(path).lower().endswith(TEXT_SUFFIXES)


def tokenizer_folder(metadata: dict | None, path: str | os.PathLike) -> str:
    """The Hugging Face folder whose tokenizer reads `path`, from the model's metadata."""
    hf = (metadata or {}).get("hf") or {}
    if not hf.get("folder"):
        raise InputError(f"{path} is text, but the model records no Hugging Face folder with a tokenizer; "
                         "pass token ids as .npz, or start from the model folder (aiopt export FOLDER)")
    if hf.get("tokenizer") is False:
        raise InputError(f"{path} is text, but the model folder {hf['folder']} has no tokenizer; save one into it "
                         "(tokenizer.save_pretrained) or pass token ids as .npz")
    return str(hf["folder"])


def load_texts(path: str | os.PathLike, tokenizer_folder: str | os.PathLike, input_spec, seq_len: int = DEFAULT_SEQ_LEN) -> tuple[dict[str, np.ndarray], list[str]]:
    """(inputs by the model's input names, int arrays of samples x seq_len; notes for the user)."""
    lines = _read_lines(Path(path))
    seq_len = _length(input_spec, seq_len, tokenizer_folder)
    tokenizer = load_tokenizer(tokenizer_folder)
    lines, cut = zip(*(_bounded(tokenizer, line, seq_len) for line in lines))
    lines = list(lines)
    lengths = [len(ids) for ids in tokenizer(lines, truncation=False)["input_ids"]]
    encoded = tokenizer(lines, padding="max_length", truncation=True, max_length=seq_len, return_tensors="np")
    missing = [s.name for s in input_spec if s.name not in encoded]
    if missing:
        raise InputError(f"the model takes {', '.join(missing)}, which its tokenizer does not produce (it gives {', '.join(encoded)}); "
                         "pass the inputs as .npz")
    inputs = {s.name: np.asarray(encoded[s.name]).astype(s.dtype) for s in input_spec}
    notes = []
    truncated = sum(n > seq_len for n in lengths)
    if truncated:
        notes.append(f"{path}: {truncated} of {len(lines)} lines are longer than {seq_len} tokens and were truncated "
                     f"(longest {max(lengths)}{' or more' if any(cut) else ''}); raise --seq-len to keep them whole")
    return inputs, notes


def _bounded(tokenizer, line: str, seq_len: int) -> tuple[str, bool]:
    """(the line, or a prefix of it that already holds more than `seq_len` tokens; whether it was
    cut): a 10 MB line is tokenized a few hundred characters at a time, not whole, only to be
    truncated. The cut falls on whitespace where there is some, so the tokens kept are the
    line's own; a prefix that holds fewer tokens (mostly spaces) grows fourfold until it does."""
    limit = 16 * seq_len + 64
    while len(line) > limit:
        prefix = line[:limit]
        space = prefix.rfind(" ", limit * 3 // 4)
        prefix = prefix[:space] if space > 0 else prefix
        if len(tokenizer(prefix, truncation=False)["input_ids"]) > seq_len:
            return prefix, True
        limit *= 4
    return line, False


def _read_lines(path: Path) -> list[str]:
    if path.is_dir():
        raise InputError(f"text file {path} is a folder; pass a .txt file with one sample per line")
    if not path.is_file():
        raise InputError(f"text file {path} does not exist; pass a .txt file with one sample per line")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8, one sample per line") from exc
    except OSError as exc:
        raise InputError(f"{path} cannot be read ({exc.strerror}); check the file") from exc
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise InputError(f"{path} holds no text (no non-empty line); write one sample per line")
    return lines


def _length(input_spec, seq_len: int, folder) -> int:
    """The padded length: the model's own when its sequence axis is fixed, else `seq_len`
    (at least 2, for the special tokens, and at most the model's position table)."""
    fixed = {s.shape[1] for s in input_spec if len(s.shape) > 1 and isinstance(s.shape[1], int)}
    if fixed:
        return fixed.pop()
    check_seq_len(seq_len, _max_positions(folder))
    return seq_len


def check_seq_len(seq_len: int, positions: int | None) -> None:
    """At least 2 (room for the special tokens) and at most the model's position table."""
    if seq_len < 2:
        raise InputError(f"--seq-len must be at least 2, got {seq_len}")
    if positions and seq_len > positions:
        raise InputError(f"--seq-len {seq_len} exceeds the {positions} positions the model has; use --seq-len {positions} or less")


def _max_positions(folder) -> int | None:
    try:
        value = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and value > 0 else None
