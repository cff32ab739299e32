"""A pre-norm Transformer encoder classifier over patches of the sample.

Attention uses separate q/k/v projections (not one fused qkv) so structured pruning can
remove whole heads, and the config records heads and head width, which pruning changes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from aiopt.reference_models.sequence import sequence_layout


@dataclass(frozen=True)
class TransformerConfig:
    input_shape: tuple[int, ...] = (40,)
    num_classes: int = 10
    patch_size: int = 4  # samples per token for 1-D inputs; an image uses one row per token
    dim: int = 96
    depth: int = 3
    heads: int = 4
    head_dim: int = 24
    mlp_dim: int = 192
    dropout: float = 0.1


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, dropout: float):
        super().__init__()
        self.heads, self.head_dim, self.dropout = heads, head_dim, dropout
        inner = heads * head_dim
        self.q, self.k, self.v = nn.Linear(dim, inner), nn.Linear(dim, inner), nn.Linear(dim, inner)
        self.proj = nn.Linear(inner, dim)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], t.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], self.heads * self.head_dim))


class EncoderBlock(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.dim)
        self.attn = SelfAttention(config.dim, config.heads, config.head_dim, config.dropout)
        self.norm2 = nn.LayerNorm(config.dim)
        self.mlp = nn.Sequential(nn.Linear(config.dim, config.mlp_dim), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(config.mlp_dim, config.dim))
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.mlp(self.norm2(x)))


class TransformerClassifier(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.tokens, self.token_features = sequence_layout(config.input_shape, config.patch_size, "patch_size", "Transformer")
        self.embed = nn.Linear(self.token_features, config.dim)
        self.pos = nn.Parameter(torch.zeros(1, self.tokens, config.dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*[EncoderBlock(config) for _ in range(config.depth)])
        self.norm = nn.LayerNorm(config.dim)
        self.classifier = nn.Linear(config.dim, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.reshape(x.shape[0], self.tokens, self.token_features)) + self.pos
        return self.classifier(self.norm(self.blocks(tokens)).mean(dim=1))
