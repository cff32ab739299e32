"""An LSTM classifier over the sample read as a sequence: MNIST-1D as 40 steps of
`step_features` values, an image as one row per step."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from aiopt.reference_models.sequence import sequence_layout


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
        self.steps, self.features = sequence_layout(config.input_shape, config.step_features, "step_features", "LSTM")
        self.lstm = nn.LSTM(self.features, config.hidden_size, config.num_layers, batch_first=True,
                            dropout=config.dropout if config.num_layers > 1 else 0.0)
        self.classifier = nn.Linear(config.hidden_size, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sequence = x.reshape(x.shape[0], self.steps, self.features)
        output, _ = self.lstm(sequence)
        return self.classifier(output[:, -1])
