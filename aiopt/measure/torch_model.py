"""Measurements of a PyTorch module: its outputs on data and what one forward pass costs
(multiply-accumulates, parameters). Pruning, distillation and the bench all count the same way."""
from __future__ import annotations

import numpy as np

from aiopt.artifacts import example_inputs


def torch_logits(model, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    import torch

    model.eval()
    with torch.no_grad():
        chunks = [model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size]))) for i in range(0, len(x), batch_size)]
    return torch.cat(chunks).numpy()


def count_macs_and_params(model, input_spec) -> tuple[int, int]:
    """Multiply-accumulates and parameters of one sample's forward pass (Torch-Pruning's counter)."""
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, example_inputs(input_spec, batch_size=1))
    model.train(was_training)
    return int(macs), int(params)
