"""A plain conv-BN-ReLU classifier, 1-D for sequences (MNIST-1D) and 2-D for images (digits).

It flattens the last feature map instead of global pooling: MNIST-1D classes depend
on where features sit, and pooling them away costs accuracy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class CNNConfig:
    input_shape: tuple[int, ...] = (40,)
    num_classes: int = 10
    channels: tuple[int, ...] = (32, 64, 64, 64)
    kernel_size: int = 5
    pool_after: tuple[int, ...] = (1, 2)  # block indices followed by a 2x max-pool
    dropout: float = 0.1


class CNN(nn.Module):
    def __init__(self, config: CNNConfig):
        super().__init__()
        self.config = config
        rank = len(config.input_shape)
        if rank not in (1, 2):
            raise ValueError(f"CNN takes 1-D or 2-D samples, got shape {config.input_shape}")
        conv, norm, pool = (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d) if rank == 1 else (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d)
        layers: list[nn.Module] = []
        in_channels, spatial = 1, list(config.input_shape)
        for index, out_channels in enumerate(config.channels):
            layers += [conv(in_channels, out_channels, config.kernel_size, padding=config.kernel_size // 2, bias=False), norm(out_channels), nn.ReLU()]
            if index in config.pool_after:
                layers.append(pool(2))
                spatial = [s // 2 for s in spatial]
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(in_channels * math.prod(spatial), config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x.unsqueeze(1))
        return self.classifier(self.dropout(torch.flatten(x, 1)))
