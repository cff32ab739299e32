"""How the sequence models (LSTM, Transformer) read a sample: as steps of features."""
from __future__ import annotations


def sequence_layout(input_shape: tuple[int, ...], per_step: int, per_step_field: str, model: str) -> tuple[int, int]:
    """(steps, features per step): a 1-D sample cut into steps of `per_step` values (the config's
    `per_step_field`), an image one row per step; any other shape is refused in one line."""
    if len(input_shape) == 1:
        if input_shape[0] % per_step:
            raise ValueError(f"sequence length {input_shape[0]} is not a multiple of {per_step_field}={per_step}")
        return input_shape[0] // per_step, per_step
    if len(input_shape) == 2:
        return input_shape[0], input_shape[1]
    raise ValueError(f"{model} takes 1-D or 2-D samples, got shape {input_shape}")
