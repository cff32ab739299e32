"""Causal-LM Hugging Face folders: recognise one, load it (weights from safetensors, no code
from the folder ever run), and describe it: parameters, layers, heads, KV heads, context
length, vocabulary, and the memory its weights and a KV cache take.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from aiopt.artifacts.hf import check_weights, float32_kwargs, import_transformers, is_hf_folder, read_json
from aiopt.errors import InputError, UnsupportedModelError, first_line

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


def read_config(folder) -> dict:
    config = read_json(Path(folder) / "config.json")
    if not isinstance(config, dict):
        raise InputError(f"{Path(folder) / 'config.json'} is not a JSON object; re-save the folder with save_pretrained")
    return config


def is_causal_lm_config(config: dict) -> bool:
    architectures = config.get("architectures") or []
    if architectures:
        return any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    import_transformers()
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return config.get("model_type") in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def is_causal_lm_folder(path) -> bool:
    """A folder with a config.json naming a causal-LM architecture (unreadable configs: False)."""
    if not is_hf_folder(path):
        return False
    try:
        return is_causal_lm_config(read_config(path))
    except InputError:
        return False


def require_causal_lm_folder(path) -> dict:
    """The folder's config, or one line saying why it is not a causal LM folder."""
    if not is_hf_folder(path):
        raise InputError(f"{path} is not a Hugging Face model folder (no config.json); pass a causal-LM folder or an ONNX exported by aiopt")
    config = read_config(path)
    if not is_causal_lm_config(config):
        names = ", ".join(config.get("architectures") or [str(config.get("model_type"))])
        raise UnsupportedModelError(f"{path} holds a {names}, not a causal language model (an architecture ending in ForCausalLM); "
                                    "generate needs a text-generation model")
    return config


@dataclass(frozen=True)
class Shape:
    """What decides a causal LM's memory: layer count, attention geometry, vocabulary."""

    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden_size: int
    context_length: int | None
    vocab_size: int
    tied_embeddings: bool

    @classmethod
    def from_config(cls, config: dict) -> Shape:
        text = config.get("text_config") or config
        try:
            heads = int(text["num_attention_heads"])
            hidden = int(text["hidden_size"])
            return cls(layers=int(text["num_hidden_layers"]), heads=heads, kv_heads=int(text.get("num_key_value_heads") or heads),
                       head_dim=int(text.get("head_dim") or hidden // heads), hidden_size=hidden,
                       context_length=text.get("max_position_embeddings"), vocab_size=int(text["vocab_size"]),
                       tied_embeddings=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", True))))
        except (KeyError, TypeError, ValueError) as exc:
            raise UnsupportedModelError(f"config.json lacks the attention geometry aiopt reads ({exc}); "
                                        "aiopt handles decoder-only models with num_hidden_layers, num_attention_heads and hidden_size") from exc

    @classmethod
    def from_kv_cache(cls, kv, source) -> Shape:
        """The Shape aiopt wrote into an artifact's metadata (its kv_cache entry), read from `source`."""
        try:
            return cls(**{name: kv[name] for name in cls.__dataclass_fields__})
        except (KeyError, TypeError) as exc:
            raise UnsupportedModelError(f"{source}'s kv_cache metadata lacks the attention geometry aiopt writes ({exc}); "
                                        "re-run the aiopt command that wrote it") from exc

    def kv_bytes_per_token(self, dtype_bytes: int = 4, batch: int = 1) -> int:
        """Keys and values of every layer for one token position."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes * batch


def decode_bytes_per_step(weight_bytes: int, shape: Shape, batch: int, context: float) -> float:
    """Bytes one decode step must read: the weights once, plus the FP32 KV cache of `batch` sequences at `context` tokens."""
    return weight_bytes + batch * shape.kv_bytes_per_token(DTYPE_BYTES["float32"]) * context


def describe_causal_lm(folder, kv_tokens: int | None = None) -> dict:
    """The inspect block for a causal-LM folder, read from config.json and the weights' header
    (no model is built): parameters, geometry, weight bytes, KV cache bytes."""
    if kv_tokens is not None and kv_tokens < 1:
        raise InputError(f"--kv-tokens must be at least 1, got {kv_tokens}")
    config = read_config(folder)
    shape = Shape.from_config(config)
    params, weight_bytes, dtypes = _safetensors_sizes(Path(folder))
    cache_dtype = "float32"  # aiopt's runtimes run the cache in float32
    tokens = kv_tokens or shape.context_length or 2048
    return {
        "architecture": (config.get("architectures") or [config.get("model_type")])[0],
        "model_type": config.get("model_type"),
        "params": params,
        "layers": shape.layers, "heads": shape.heads, "kv_heads": shape.kv_heads, "head_dim": shape.head_dim,
        "hidden_size": shape.hidden_size, "context_length": shape.context_length, "vocab_size": shape.vocab_size,
        "tied_embeddings": shape.tied_embeddings,
        "weights_dtype": ",".join(sorted(dtypes)) or None,
        "weights_bytes": weight_bytes,
        "kv_cache_dtype": cache_dtype,
        "kv_cache_bytes_per_token": shape.kv_bytes_per_token(DTYPE_BYTES[cache_dtype]),
        "kv_cache_tokens": tokens,
        "kv_cache_bytes": shape.kv_bytes_per_token(DTYPE_BYTES[cache_dtype]) * tokens,
    }


_SAFETENSORS_DTYPES = {"F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2), "F64": ("float64", 8),
                       "I8": ("int8", 1), "U8": ("uint8", 1), "I64": ("int64", 8), "I32": ("int32", 4)}


def _safetensors_sizes(folder: Path) -> tuple[int | None, int | None, set[str]]:
    """(parameters, bytes, dtypes) from the safetensors headers alone: nothing is loaded."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None, None, set()
    params = size = 0
    dtypes: set[str] = set()
    for file in files:
        with open(file, "rb") as fh:
            length = int.from_bytes(fh.read(8), "little")
            if length <= 0 or length > 100 << 20:
                raise InputError(f"{file} is not a safetensors file (header length {length}); re-save the weights with save_pretrained")
            header = json.loads(fh.read(length))
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in entry["shape"]:
                count *= int(dim)
            dtype, width = _SAFETENSORS_DTYPES.get(entry["dtype"], (entry["dtype"].lower(), 0))
            params += count
            size += count * width
            dtypes.add(dtype)
    return params, size, dtypes


def load_causal_lm(folder):
    """(model in float32, eval mode; config dict) from a causal-LM folder."""
    folder = Path(folder).resolve()
    config = require_causal_lm_folder(folder)
    use_safetensors = check_weights(folder, trust_pickle=False)
    transformers = import_transformers()
    try:
        model, info = transformers.AutoModelForCausalLM.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=use_safetensors, trust_remote_code=False,
            output_loading_info=True, **float32_kwargs(transformers))
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        text = str(exc)
        if "trust_remote_code" in text or "custom code" in text:
            raise UnsupportedModelError(f"{folder} needs Python code shipped with it (trust_remote_code), which aiopt does not run") from exc
        raise InputError(f"{folder} cannot be loaded as a causal LM ({first_line(exc)}); re-save it with save_pretrained") from exc
    missing = sorted(k for k in info.get("missing_keys", ()) if "lm_head" not in k or not Shape.from_config(config).tied_embeddings)
    if missing:
        raise InputError(f"{folder}: the weights lack {len(missing)} tensor(s) the model needs ({', '.join(missing[:3])}); "
                         "the weights do not match config.json: re-save the model with save_pretrained")
    return model.eval(), config
