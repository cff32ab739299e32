"""`aiopt run` on a causal LM (a folder, an aiopt KV-cache export, or what aiopt quantize wrote, on
the runtime its metadata names): each sequence's token ids through one prefill, the logits at every
position written to an .npz, as `aiopt run` writes any model's outputs.

Inputs: an .npz with `input_ids` (int, batch x length; every row the same length, no padding),
or a .txt with one text per line, each tokenized with the artifact's tokenizer (lines of any
length; the .npz then holds `input_ids.N` and `logits.N` per line).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from aiopt.artifacts.hf import load_tokenizer
from aiopt.errors import InputError
from aiopt.fileio import atomic_path, check_output_path
from aiopt.llm.open_artifact import open_causal_lm


def _sequences(data: Path, tokenizer_folder, vocab_size: int, context: int | None) -> list[np.ndarray]:
    if data.suffix == ".txt":
        lines = [line for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise InputError(f"--input {data} holds no text; give one prompt per line")
        tokenizer = load_tokenizer(tokenizer_folder)
        rows = [np.asarray(tokenizer(line, add_special_tokens=False)["input_ids"], dtype=np.int64)[None] for line in lines]
    elif data.suffix == ".npz":
        with np.load(data, allow_pickle=False) as archive:
            if "input_ids" not in archive.files:
                raise InputError(f"--input {data} has no input_ids array (it has: {', '.join(archive.files) or 'nothing'}); "
                                 "save the token ids as input_ids, batch x length")
            ids = archive["input_ids"]
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or ids.shape[1] == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise InputError(f"--input {data}: input_ids must be integer token ids, batch x length (got {ids.dtype} {list(ids.shape)})")
        rows = [ids.astype(np.int64)]
    else:
        raise InputError(f"--input {data} is neither .npz (input_ids) nor .txt (one text per line) for a causal LM")
    for row in rows:
        if row.size and (row.min() < 0 or row.max() >= vocab_size):
            raise InputError(f"--input {data}: token id {int(row.max() if row.max() >= vocab_size else row.min())} is outside the vocabulary "
                             f"of {vocab_size}")
        if context and row.shape[1] > context:
            raise InputError(f"--input {data}: a sequence of {row.shape[1]} tokens exceeds the model's context of {context}; shorten it")
        if row.shape[1] == 0:
            raise InputError(f"--input {data}: a line tokenizes to no tokens; remove it")
    return rows


def run_causal_lm(artifact, data, output, runtime: str | None = None, force: bool = False, threads: int | None = None) -> dict:
    out = check_output_path(output, artifact, data, force=force)
    data = Path(data)
    if not data.is_file():
        raise InputError(f"--input {data} does not exist; pass an .npz with input_ids or a .txt with one text per line")
    lm, tokenizer_folder, _ = open_causal_lm(artifact, threads=threads, runtime=runtime)
    rows = _sequences(data, tokenizer_folder, lm.shape.vocab_size, lm.shape.context_length)
    logits = []
    for ids in rows:
        logits.append(lm.prefill(ids)[0].astype(np.float32))
    outputs = ({"input_ids": rows[0], "logits": logits[0]} if data.suffix == ".npz"
               else {key: value for n, (ids, out_logits) in enumerate(zip(rows, logits)) for key, value in
                     ((f"input_ids.{n}", ids), (f"logits.{n}", out_logits))})
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **outputs)
    return {"path": str(out), "backend": lm.runtime, "device": "cpu", "samples": sum(len(r) for r in rows),
            "outputs": {k: {"shape": list(v.shape), "dtype": v.dtype.name} for k, v in outputs.items()},
            "notes": ["its graph computes the last position's logits only (the GenAI builder's prune_lm_head)"] if getattr(lm, "last_logits_only", False) else []}

