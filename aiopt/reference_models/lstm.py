"""An LSTM classifier over the sample read as a sequence: MNIST-1D as 40 steps of
`step_features` values, an image as one row per step."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LSTMConfig:
    input_shape: tuple[int, ...] = (40,)
    num_classes: int = 10
    hidden_size: int = 128
    num_layers: int = 1
    step_features: int = 1  # values per time step for 1-D samples
    dropout: float = 0.0


class LSTMClassifier(nn.Module):
    def __init__(self, config: LSTMConfig):
        super().__init__()
        self.config = config
        if len(config.input_shape) == 1:
            if config.input_shape[0] % config.step_features:
                raise ValueError(f"sequence length {config.input_shape[0]} is not a multiple of step_features={config.step_features}")
            self.steps, features = config.input_shape[0] // config.step_features, config.step_features
        elif len(config.input_shape) == 2:
            self.steps, features = config.input_shape
        else:
            raise ValueError(f"LSTM takes 1-D or 2-D samples, got shape {config.input_shape}")
        self.features = features
        self.lstm = nn.LSTM(features, config.hidden_size, config.num_layers, batch_first=True,
                            dropout=config.dropout if config.num_layers > 1 else 0.0)
        self.classifier = nn.Linear(config.hidden_size, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sequence = x.reshape(x.shape[0], self.steps, self.features)
        output, _ = self.lstm(sequence)
        return self.classifier(output[:, -1])
