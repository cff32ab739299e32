"""Pruning of aiopt checkpoints of the registry's architectures (cnn, lstm, transformer).

Methods:
- `magnitude`: unstructured L1 pruning (torch.nn.utils.prune) of every Conv/Linear/LSTM weight,
  ranked globally or per layer. The weights keep their shapes and hold zeros.
- `channel`: structured pruning that removes whole conv channels, LSTM hidden units, attention
  heads and MLP neurons, kept consistent across layers by Torch-Pruning's dependency graph. The
  pruned model is rebuilt from a config derived from its new shapes, because a checkpoint is
  config + state_dict, never a pickled module (design.md). In prune_channels.py.
- `2:4`: semi-structured sparsity, 2 of every 4 consecutive input weights zeroed, the pattern
  sparse tensor cores run (TensorRT); the layers that follow it are recorded in the metadata.

Masks of `magnitude` and `2:4` are torch.nn.utils.prune reparametrisations during fine-tuning
(the forward pre-hook multiplies by the mask, so pruned weights stay zero whatever the optimizer
does) and are made permanent with prune.remove before saving.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiopt.artifacts import child_metadata, save_checkpoint
from aiopt.compress.common import dataset_for, load_reference_checkpoint
from aiopt.compress.prune_channels import prune_channels, widths
from aiopt.errors import InputError, UnsupportedModelError
from aiopt.evaluate import accuracy
from aiopt.fileio import check_output_path
from aiopt.measure.quality import check_against_parent
from aiopt.measure.torch_model import count_macs_and_params, torch_logits
from aiopt.options import option
from aiopt.reference_models import build_model, config_to_dict, get_entry
from aiopt.reference_models.train import TrainConfig, train_model

METHODS = ("magnitude", "channel", "2:4")
SCOPES = ("global", "layer")


@dataclass(frozen=True)
class PruneConfig:
    method: str = option("channel", "--method", "channel (removes channels/units/heads), magnitude (unstructured) or 2:4.", always=True)
    sparsity: float = option(0.5, "--sparsity", "Fraction removed, strictly between 0 and 1 (2:4 is always 50% in groups of 4).", always=True)
    scope: str = option("global", "--scope", "magnitude: rank weights across all layers (global) or within each (layer).")
    # `aiopt prune` fine-tunes 10 epochs unless told; the config (and optimize) default to none
    finetune_epochs: int = option(0, "--finetune-epochs",
                                  "Fine-tuning epochs after pruning (0: none; the Transformer needs about 30 after channel pruning).", cli_default=10, always=True)
    steps: int = option(1, "--steps", "channel: rounds of prune + fine-tune, the epochs split across them.")
    target_params: float | None = option(None, "--target-params", "channel: keep at most this fraction of the parameters (searches the sparsity).")
    lr: float | None = option(None, "--lr", "Fine-tuning learning rate (default: the recipe's for channel, a third of it for magnitude and 2:4).")
    seed: int = option(0, "--seed", "Random seed.")
    dataset: str | None = option(None, "--dataset", "Fine-tuning data (default: the dataset the model records).")


@dataclass(frozen=True)
class PruneResult:
    path: str
    metadata: dict
    report: dict


def validate(config: PruneConfig) -> None:
    """Refuse a bad configuration before anything is loaded or trained."""
    if config.method not in METHODS:
        raise InputError(f"unknown pruning method {config.method!r}; use one of {', '.join(METHODS)}")
    if not 0.0 < config.sparsity < 1.0:
        raise InputError(f"--sparsity must be strictly between 0 and 1 (the fraction removed), got {config.sparsity}")
    if config.scope not in SCOPES:
        raise InputError(f"unknown --scope {config.scope!r}; use global or layer")
    if config.steps < 1:
        raise InputError(f"--steps must be at least 1, got {config.steps}")
    if config.finetune_epochs < 0:
        raise InputError(f"--finetune-epochs must be 0 or more, got {config.finetune_epochs}")
    if config.target_params is not None:
        if config.method != "channel":
            raise InputError("--target-params needs --method channel (only structured pruning removes parameters)")
        if not 0.0 < config.target_params < 1.0:
            raise InputError(f"--target-params must be strictly between 0 and 1 (the fraction of parameters kept), got {config.target_params}")
    if config.lr is not None and not config.lr > 0:
        raise InputError(f"--lr must be positive, got {config.lr}")


def prune_checkpoint(
    path: str | os.PathLike,
    output: str | os.PathLike,
    config: PruneConfig,
    force: bool = False,
    on_progress: Callable[[str], None] | None = None,
    on_epoch: Callable[[Any], None] | None = None,
) -> PruneResult:
    """Prune the aiopt checkpoint at `path`, optionally fine-tune, check, and write `output`.

    `on_progress(message)` gets a line per stage; `on_epoch(stats)` a train.EpochStats after each
    fine-tuning epoch (without it, each epoch is a line for `on_progress`).
    """
    validate(config)
    out = check_output_path(output, path, force=force)

    import torch

    progress = on_progress or (lambda message: None)
    parent = load_reference_checkpoint(path, "prune")
    data = dataset_for(parent.loaded.metadata, config.dataset, step="prune")
    spec = parent.loaded.input_spec
    torch.manual_seed(config.seed)

    def test_accuracy(model) -> float:
        return round(accuracy(torch_logits(model, data.x_test), data.y_test), 6)

    parent_logits = torch_logits(parent.model, data.x_test)
    accuracy_before = round(accuracy(parent_logits, data.y_test), 6)
    macs_before, params_before = count_macs_and_params(parent.model, spec)
    shapes_before = {name: list(w.shape) for name, w in _weights(parent.model)}
    tuner = _FineTuner(parent.architecture, data, config, progress, on_epoch)

    model = _copy_model(parent)
    if config.method == "channel":
        model, new_config, extra = prune_channels(model, parent, config, tuner, test_accuracy, progress)
    else:
        new_config = parent.config
        extra = _prune_unstructured(model, config, tuner, test_accuracy, progress)

    final_logits = torch_logits(model, data.x_test)
    final_accuracy = round(accuracy(final_logits, data.y_test), 6)
    parent_agreement = check_against_parent(parent_logits, final_logits, f"the {config.method}-pruned model")
    macs_after, params_after = count_macs_and_params(model, spec)

    weights = _weights(model)
    zeros, total = sum(int((w == 0).sum()) for _, w in weights), sum(w.numel() for _, w in weights)
    report = {
        "method": config.method,
        "sparsity": None if config.method == "2:4" else config.sparsity,
        **({"scope": config.scope} if config.method == "magnitude" else {}),
        **extra,
        "params_before": params_before,
        "params_after": params_after,
        "param_ratio": round(params_after / params_before, 6),
        "macs_before": macs_before,
        "macs_after": macs_after,
        "zero_fraction": round(zeros / total, 6),  # over the Conv/Linear/LSTM weights
        "layers": [
            {"name": name, "shape_before": shapes_before[name], "shape_after": list(w.shape), "zero_fraction": round(float((w == 0).float().mean()), 6)}
            for name, w in weights
        ],
        "accuracy_before": accuracy_before,
        "accuracy_after_finetune": final_accuracy if tuner.epochs_run else None,
        "finetune_epochs": tuner.epochs_run,
        "finetune_lr": tuner.lr if tuner.epochs_run else None,
        "finetune_seconds": round(tuner.seconds, 2),
        "config_before": widths(parent.architecture, parent.config),
        "config_after": widths(parent.architecture, new_config),
    }
    metadata = child_metadata(
        parent.loaded, "prune",
        config=config_to_dict(new_config),
        params_count=params_after,
        metrics={"accuracy": final_accuracy, "split": "test", "samples": len(data.y_test)},
        pruning=report,
        agreement_with_parent=parent_agreement,
        **({"sparsity_pattern": "2:4", "sparse_layers": extra["sparse_layers"]} if config.method == "2:4" else {}),
    )
    save_checkpoint(model, metadata, out)
    progress(f"wrote {out}: {params_before:,} -> {params_after:,} parameters, test accuracy {accuracy_before:.1%} -> {final_accuracy:.1%}")
    return PruneResult(str(out), metadata, report)


# ---------------------------------------------------------------- shared pieces

def _copy_model(parent):
    """A fresh copy of the parent (rebuilt from its config), so the parent stays intact for comparison."""
    model = build_model(parent.architecture, parent.config)
    model.load_state_dict(parent.model.state_dict())
    return model.eval()


def _weights(model) -> list[tuple[str, Any]]:
    """The weight matrices pruning acts on: Conv/Linear weights and LSTM weight_ih/weight_hh, by state_dict name."""
    from torch import nn

    found = []
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            found.append((f"{prefix}weight", module.weight.detach()))
        elif isinstance(module, nn.LSTM):
            found += [(f"{prefix}{n}", getattr(module, n).detach()) for n in module._flat_weights_names if n.startswith("weight")]
    return found


class _FineTuner:
    """Fine-tunes with the architecture's training recipe (learning rate as below) and keeps the tally."""

    def __init__(self, architecture: str, data, config: PruneConfig, progress, on_epoch=None):
        recipe_lr = get_entry(architecture).train_defaults.get("lr", 3e-3)
        # Removing half the channels takes the base models to 15-67% accuracy: that is retraining, and
        # the recipe's own rate recovered more than a third of it did, on all three (CNN 98.8 vs 98.1%,
        # LSTM 95.3 vs 95.1%, Transformer 94.7 vs 93.4% after 10/10/30 epochs). A mask keeps most of
        # the accuracy, so magnitude and 2:4 fine-tune gently, at a third of it.
        self.lr = config.lr or (recipe_lr if config.method == "channel" else recipe_lr / 3)
        self.data, self.seed, self.progress = data, config.seed, progress
        self.on_epoch = on_epoch or (lambda s: progress(f"  epoch {s.epoch}/{s.epochs}: loss {s.loss:.4f}, train accuracy {s.train_accuracy:.1%}"))
        self.epochs_run, self.seconds = 0, 0.0

    def __call__(self, model, epochs: int) -> None:
        if epochs < 1:
            return
        self.progress(f"fine-tuning for {epochs} epoch(s) at lr {self.lr:g}")
        start = time.perf_counter()
        train_model(model, self.data, TrainConfig(epochs=epochs, lr=self.lr, seed=self.seed + self.epochs_run),
                    on_epoch=self.on_epoch)
        self.seconds += time.perf_counter() - start
        self.epochs_run += epochs


# ---------------------------------------------------------------- magnitude and 2:4

def _prune_unstructured(model, config: PruneConfig, tuner: _FineTuner, test_accuracy, progress) -> dict:
    from torch.nn.utils import prune

    targets = _mask_targets(model)
    extra: dict = {}
    if config.method == "magnitude":
        if config.scope == "global":
            prune.global_unstructured([(m, n) for _, m, n in targets], pruning_method=prune.L1Unstructured, amount=config.sparsity)
        else:
            for _, module, name in targets:
                prune.l1_unstructured(module, name, amount=config.sparsity)
    else:
        sparse, skipped = [], []
        for full_name, module, name in targets:
            weight = getattr(module, name)
            if name != "weight":  # sparse tensor cores run Conv/Linear (GEMM) weights, not the LSTM cell
                skipped.append({"name": full_name, "reason": "not a Linear/Conv weight"})
            elif weight.shape[1] % 4:
                skipped.append({"name": full_name, "reason": f"input dimension {weight.shape[1]} is not a multiple of 4"})
            else:
                prune.custom_from_mask(module, name, _two_of_four_mask(weight.detach()))
                sparse.append(full_name)
        if not sparse:
            raise UnsupportedModelError("no Linear/Conv weight of this model has an input dimension that is a multiple of 4; 2:4 sparsity cannot apply")
        extra = {"sparsity_pattern": "2:4", "sparse_layers": sparse, "skipped_layers": skipped}
    progress(f"{config.method} pruning applied to {len(targets)} weight tensors")
    extra["accuracy_after_prune"] = test_accuracy(model)
    tuner(model, config.finetune_epochs)  # the masks stay applied by the pre-hooks throughout
    for _, module, name in targets:
        if prune.is_pruned(module) and hasattr(module, f"{name}_mask"):
            prune.remove(module, name)
    return extra


def _mask_targets(model) -> list[tuple[str, Any, str]]:
    """(state_dict name, module, parameter name) of each weight `_weights` lists."""
    modules = dict(model.named_modules())
    return [(full, modules[full.rpartition(".")[0]], full.rpartition(".")[2]) for full, _ in _weights(model)]


def _two_of_four_mask(weight):
    """Keep the 2 largest |w| of every 4 consecutive input weights (dim 1); for a conv, per kernel position."""
    import torch

    # Move the input dim last so groups of 4 run along it, as sparse tensor cores read them.
    moved = weight.abs().movedim(1, -1)
    groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // 4, 4)
    keep = torch.zeros_like(groups).scatter_(-1, groups.topk(2, dim=-1).indices, 1.0)
    return keep.reshape(moved.shape).movedim(-1, 1).contiguous()


def two_of_four_holds(weight) -> bool:
    """Whether every group of 4 consecutive input weights has at most 2 nonzeros."""
    moved = weight.movedim(1, -1)
    return bool(((moved.reshape(*moved.shape[:-1], -1, 4) != 0).sum(-1) <= 2).all())
