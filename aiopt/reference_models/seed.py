"""One seed for every random source a training run draws from (Python, NumPy, torch)."""
from __future__ import annotations

import random

import numpy as np


def set_seed(seed: int) -> None:
    import torch  # here: the CLI imports the trainers at its top, and `aiopt --help` must not load torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
