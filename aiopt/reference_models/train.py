"""Deterministic CPU training and evaluation for the reference models.

Recipe: AdamW with a one-cycle schedule, label smoothing, and light random shifts of
1-D signals (MNIST-1D classes survive small translations; the models must learn that).

torch is imported inside the functions: distill, prune and the CLI import this module at their
top, and `aiopt --help` must not load torch.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

import aiopt
from aiopt.artifacts import command_line, now_iso, save_checkpoint
from aiopt.data import Dataset, load_dataset
from aiopt.errors import InputError, UnsupportedModelError
from aiopt.fileio import check_output_path
from aiopt.options import DEVICE_HELP, option
from aiopt.reference_models import build_model, config_to_dict, get_entry, make_config, parse_model_name
from aiopt.reference_models.seed import set_seed
from aiopt.reference_models.train_gpt import GPTRecipe, train_gpt
from aiopt.runtime.torch_backend import torch_device
from aiopt.specs import TensorSpec, specs_to_json

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.05
    max_shift: int = 3  # random roll of 1-D samples by up to this many steps
    seed: int = 0


@dataclass(frozen=True)
class TrainOptions:
    """What `aiopt train` is asked beside the model's name (train_reference_model's settings)."""
    dataset: str | None = option(None, ("--dataset", "-d"), "Training data: mnist1d (default) or digits; gpt trains on sotu.")
    epochs: int | None = option(None, "--epochs", "Epochs (default: the model's tuned recipe).")
    seed: int = option(0, "--seed", "Random seed; the same seed gives the same weights.")
    device: str = option("cpu", "--device", DEVICE_HELP)


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    epochs: int
    loss: float
    train_accuracy: float


def _shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    import torch

    if max_shift <= 0 or x.dim() != 2:
        return x
    length = x.shape[1]
    shifts = torch.randint(-max_shift, max_shift + 1, (x.shape[0], 1), generator=generator)
    index = (torch.arange(length).unsqueeze(0) - shifts) % length
    return torch.gather(x, 1, index)


# (logits, labels, inputs) -> scalar loss
LossFn = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]


def recipe_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """The recipe's hard-label loss: cross-entropy with label smoothing."""
    import torch.nn.functional as F

    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


def train_model(
    model: nn.Module,
    dataset: Dataset,
    config: TrainConfig,
    on_epoch: Callable[[EpochStats], None] | None = None,
    loss_fn: LossFn | None = None,
    extra_modules: tuple[nn.Module, ...] = (),
    device: str = "cpu",
) -> dict:
    """Train in place; return a summary (time, final loss). Same seed, same weights.

    `loss_fn(logits, labels, inputs)` replaces the recipe's label-smoothed cross-entropy
    (distillation adds a teacher's soft targets); `inputs` is the augmented batch the
    model saw, so a teacher can be fed exactly the same samples. `extra_modules` are
    trained alongside the model (a distillation loss's feature projection). On `device`
    "cuda" the model trains there (batches are drawn and shifted on the CPU, so the sample
    order and augmentation are the same as on the CPU for a seed).
    """
    import torch

    if loss_fn is None:
        def loss_fn(logits, labels, inputs):
            return recipe_loss(logits, labels, config.label_smoothing)

    set_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    x = torch.from_numpy(dataset.x_train)
    y = torch.from_numpy(dataset.y_train)
    steps_per_epoch = (len(y) + config.batch_size - 1) // config.batch_size
    target = torch_device(device)
    modules = (model, *extra_modules)
    for module in modules:
        module.to(target)
    parameters = [p for module in modules for p in module.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch, pct_start=0.2)
    start, loss_value = time.perf_counter(), float("nan")
    for epoch in range(config.epochs):
        for module in modules:
            module.train()
        order = torch.randperm(len(y), generator=generator)
        total_loss, correct = 0.0, 0
        for begin in range(0, len(y), config.batch_size):
            batch = order[begin:begin + config.batch_size]
            inputs, labels = _shift(x[batch], config.max_shift, generator).to(target), y[batch].to(target)
            logits = model(inputs)
            loss = loss_fn(logits, labels, inputs)
            if not torch.isfinite(loss):
                raise UnsupportedModelError(f"training diverged: the loss became {float(loss)} in epoch {epoch + 1}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += float(loss.detach()) * len(batch)
            correct += int((logits.argmax(1) == labels).sum())
        loss_value = total_loss / len(y)
        if on_epoch:
            on_epoch(EpochStats(epoch + 1, config.epochs, loss_value, correct / len(y)))
    model.eval().cpu()  # evaluation, checkpoints and exports take it from the CPU
    return {"train_seconds": round(time.perf_counter() - start, 2), "final_loss": round(loss_value, 5)}


def predict(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    import torch

    model.eval()
    with torch.no_grad():
        outputs = [model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size]))) for i in range(0, len(x), batch_size)]
    return torch.cat(outputs).argmax(1).numpy()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return float((predict(model, x) == y).mean())


@dataclass(frozen=True)
class TrainResult:
    path: str
    architecture: str
    size: str
    dataset: str
    accuracy: float
    params: int
    train_seconds: float
    metadata: dict


def train_reference_model(
    spec: str,
    output: str,
    dataset: str | None = None,
    epochs: int | None = None,
    seed: int = 0,
    force: bool = False,
    on_epoch: Callable[[EpochStats], None] | None = None,
    device: str = "cpu",
) -> TrainResult:
    """Train reference model `spec` (e.g. `cnn:tiny`) on a built-in dataset and write its checkpoint."""
    import torch

    name, size = parse_model_name(spec)
    if get_entry(name).kind == "causal-lm":
        return _train_causal_lm(spec, output, dataset, epochs, seed, force, on_epoch, device)
    out = check_output_path(output, force=force)
    if epochs is not None and epochs < 1:
        raise InputError(f"--epochs must be at least 1, got {epochs}")
    torch_device(device)  # no GPU for --device cuda: exit 4 before any work
    data = load_dataset(dataset or "mnist1d")
    config = make_config(spec, data.sample_shape, data.num_classes)
    set_seed(seed)
    model = build_model(name, config)
    recipe = get_entry(name).train_defaults
    train_config = TrainConfig(**{**recipe, "seed": seed, **({"epochs": epochs} if epochs else {})})
    summary = train_model(model, data, train_config, on_epoch, device=device)
    test_accuracy = accuracy(model, data.x_test, data.y_test)
    params = sum(p.numel() for p in model.parameters())
    metadata = {
        "aiopt_version": aiopt.__version__,
        "step": "train",
        "architecture": name,
        "size": size,
        "config": config_to_dict(config),
        "inputs": specs_to_json([TensorSpec("x", ("batch", *data.sample_shape), "float32")]),
        "outputs": specs_to_json([TensorSpec("logits", ("batch", data.num_classes), "float32")]),
        "num_classes": data.num_classes,
        "dataset": data.describe(),
        "metrics": {"accuracy": test_accuracy, "split": "test", "samples": len(data.y_test)},
        "params_count": params,
        "training": {**dataclasses.asdict(train_config), **summary, "torch_version": torch.__version__, "threads": torch.get_num_threads(),
                     "device": device},
        "command": command_line(),
        "created_at": now_iso(),
        "parent": None,
        "lineage": [],
    }
    save_checkpoint(model, metadata, out)
    return TrainResult(str(out), name, size, data.name, test_accuracy, params, summary["train_seconds"], metadata)


def _train_causal_lm(spec: str, output: str, dataset: str | None, epochs: int | None, seed: int, force: bool,
                     on_epoch: Callable | None, device: str) -> TrainResult:
    """`gpt`: a language model trained on the sotu corpus, written as a Hugging Face folder."""
    name, size = parse_model_name(spec)
    if dataset not in (None, "sotu"):
        raise InputError(f"{name} trains on the sotu corpus only; drop --dataset {dataset} (or pass --dataset sotu)")
    if device != "cpu":
        raise InputError(f"{name} trains on the CPU only here; drop --device {device}")
    if epochs is not None:
        raise InputError(f"{name} trains for a number of steps (its recipe), not epochs; drop --epochs")
    recipe = GPTRecipe(**{**get_entry(name).train_defaults[size], "seed": seed})
    metadata = train_gpt(spec, output, recipe, force=force, on_step=on_epoch)
    metrics = metadata["metrics"]
    return TrainResult(metadata["path"], name, size, "sotu", metrics["next_token_accuracy"], metadata["params_count"],
                       metadata["training"]["train_seconds"], {**metadata, "training": {**metadata["training"], "epochs": recipe.steps}})
