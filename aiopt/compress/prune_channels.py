"""Channel pruning (`--method channel`): structured pruning that removes whole conv channels, LSTM
hidden units, attention heads and MLP neurons, kept consistent across layers by Torch-Pruning's
dependency graph, in as many rounds as asked. The widths to reach are planned on the architecture's
config first (the same fraction per layer, so the config can express the result), and the pruned
model is rebuilt from that config and checked to compute what the pruned one does: a checkpoint is
config + state_dict, never a pickled module (design.md).

torch and torch_pruning are imported inside the functions that use them.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from aiopt.artifacts import example_inputs
from aiopt.errors import InputError, UnsupportedModelError
from aiopt.measure.torch_model import count_macs_and_params
from aiopt.reference_models import build_model


def _structure(architecture: str, model) -> dict[str, list[tuple[Any, int]]]:
    """Width fields of the architecture's config -> the modules whose outputs carry them, with the
    size of one unit (a head is head_dim outputs of q; k, v and proj follow by dependency)."""
    if architecture == "cnn":
        from torch import nn

        return {"channels": [(m, 1) for m in model.features if isinstance(m, nn.modules.conv._ConvNd)]}
    if architecture == "lstm":
        if model.lstm.num_layers != 1:
            raise UnsupportedModelError("channel pruning supports single-layer LSTMs only; use --method magnitude for this model")
        return {"hidden_size": [(model.lstm, 1)]}
    if architecture == "transformer":
        return {
            "heads": [(block.attn.q, block.attn.head_dim) for block in model.blocks],
            "mlp_dim": [(block.mlp[0], 1) for block in model.blocks],
        }
    raise UnsupportedModelError(f"channel pruning does not know architecture {architecture}; use --method magnitude")


def _out_width(module) -> int:
    for attribute in ("out_channels", "out_features", "hidden_size"):
        if hasattr(module, attribute):
            return int(getattr(module, attribute))
    raise UnsupportedModelError(f"cannot read the output width of {type(module).__name__}")


def widths(architecture: str, config) -> dict:
    fields = {"cnn": ("channels",), "lstm": ("hidden_size",), "transformer": ("heads", "mlp_dim")}[architecture]
    return {f: list(v) if isinstance(v, tuple) else v for f, v in ((f, getattr(config, f)) for f in fields)}


def _planned_config(architecture: str, config, sparsity: float):
    """The config after removing `sparsity` of every layer's units (the same fraction per layer, so
    all Transformer blocks keep the same heads and mlp_dim and the config can express the result)."""
    changes = {}
    for field_name, width in widths(architecture, config).items():
        values = width if isinstance(width, list) else [width]
        kept = [math.floor(v * (1 - sparsity) + 0.5) for v in values]
        if min(kept) < 1:
            raise InputError(
                f"sparsity {sparsity:g} would leave no {field_name.replace('_', ' ')} in a layer of {architecture} ({field_name}={width}); "
                "choose a lower --sparsity"
            )
        changes[field_name] = tuple(kept) if isinstance(width, list) else kept[0]
    return dataclasses.replace(config, **changes)


def _sparsity_for_target(parent, target: float) -> tuple[float, float]:
    """The smallest uniform sparsity whose pruned architecture keeps at most `target` of the parameters."""
    def ratio(sparsity: float) -> float:
        planned = _planned_config(parent.architecture, parent.config, sparsity)
        return count_macs_and_params(build_model(parent.architecture, planned), parent.loaded.input_spec)[1] / full

    full = count_macs_and_params(parent.model, parent.loaded.input_spec)[1]
    low, high = 0.0, _largest_valid_sparsity(parent)
    reached = ratio(high)
    if reached > target:
        raise InputError(f"--target-params {target:g} is out of reach: keeping one unit per layer still keeps {reached:.1%} of the parameters")
    for _ in range(30):  # the ratio is a step function of the sparsity: bisect to its first step below target
        middle = (low + high) / 2
        if ratio(middle) <= target:
            high = middle
        else:
            low = middle
    return high, ratio(high)


def _largest_valid_sparsity(parent) -> float:
    """The largest sparsity that leaves every layer at least one unit."""
    low, high = 0.0, 1.0
    for _ in range(30):
        middle = (low + high) / 2
        try:
            _planned_config(parent.architecture, parent.config, middle)
            low = middle
        except InputError:
            high = middle
    return low


def prune_channels(model, parent, config, tuner: Callable[[Any, int], None], test_accuracy, progress):
    """Remove `config.sparsity` of every layer's units (or as much as --target-params asks) in
    `config.steps` rounds, each pruned through the dependency graph, rebuilt from its derived config
    and fine-tuned by `tuner`; (model, final config, report entries)."""
    _structure(parent.architecture, parent.model)  # refuses what it cannot prune before any work
    sparsity, extra = config.sparsity, {}
    if config.target_params is not None:
        sparsity, reached = _sparsity_for_target(parent, config.target_params)
        extra = {"target_params": config.target_params, "sparsity": round(sparsity, 6)}  # the sparsity used, found by the search
        progress(f"sparsity {sparsity:.3f} keeps {reached:.1%} of the parameters (target {config.target_params:.0%})")
    final = _planned_config(parent.architecture, parent.config, sparsity)  # refuses zero-wide layers before any work
    epochs = [config.finetune_epochs // config.steps + (i < config.finetune_epochs % config.steps) for i in range(config.steps)][::-1]
    rounds = []
    for step in range(1, config.steps + 1):
        target = final if step == config.steps else _planned_config(parent.architecture, parent.config, sparsity * step / config.steps)
        progress(f"step {step}/{config.steps}: pruning to {widths(parent.architecture, target)}")
        _prune_to(model, parent, target)
        model = _rebuild(model, parent, target)
        record = {"step": step, "config": widths(parent.architecture, target), "accuracy_after_prune": test_accuracy(model), "finetune_epochs": epochs[step - 1]}
        tuner(model, epochs[step - 1])
        if epochs[step - 1]:
            record["accuracy_after_finetune"] = test_accuracy(model)
        rounds.append(record)
    return model, final, {**extra, "steps": rounds, "accuracy_after_prune": rounds[-1]["accuracy_after_prune"]}


def _prune_to(model, parent, target) -> None:
    """Remove the least important units of each layer until it has the widths of `target`.

    The units are ranked by Torch-Pruning's group L2 magnitude (the unit's weights in every layer
    its removal touches) and removed through the dependency graph, which shrinks the coupled
    layers (BatchNorm, the next conv's inputs, the flattened classifier, k/v/proj) to match.

    The graph is driven directly rather than through tp.pruner.BasePruner, whose ratios would not
    give these exact widths: it also prunes the Transformer's residual width (embed, proj, mlp out,
    every LayerNorm) unless each of those layers is excluded, it removes heads only when a width
    ratio above 0 triggers the attention group, and in iterative steps it takes each step's
    cumulative head ratio of the heads still left (4 heads at 0.5 in 2 steps end with 1, not 2).
    """
    import torch
    import torch_pruning as tp

    model.eval()
    lstm_pruner, importance = _torch_pruning_helpers()
    graph = tp.DependencyGraph().build_dependency(
        model, example_inputs(parent.loaded.input_spec, batch_size=1),
        customized_pruners={torch.nn.LSTM: lstm_pruner},
        # Parameters held by the model itself (the Transformer's position table) run along the
        # residual width, which is never pruned; declaring them silences Torch-Pruning's guess.
        unwrapped_parameters=[(p, p.dim() - 1) for p in model.parameters(recurse=False)],
    )
    for field_name, roots in _structure(parent.architecture, model).items():
        wanted = getattr(target, field_name)
        for index, (module, unit) in enumerate(roots):
            keep = wanted[index] if isinstance(wanted, tuple) else wanted
            width = _out_width(module)
            units = width // unit
            if keep >= units:
                continue
            prune_fn = graph.get_pruner_of_module(module).prune_out_channels
            scores = importance(graph.get_pruning_group(module, prune_fn, list(range(width)))).view(units, unit).sum(1)
            removed = torch.argsort(scores)[: units - keep].tolist()
            graph.get_pruning_group(module, prune_fn, [u * unit + j for u in removed for j in range(unit)]).prune()
    if parent.architecture == "transformer":  # its forward splits by self.heads, which the rebuilt model reads from the config
        for block in model.blocks:
            block.attn.heads = block.attn.q.out_features // block.attn.head_dim


def _rebuild(pruned, parent, target):
    """A fresh model of the derived config holding the pruned weights, checked to compute the same outputs."""
    import torch

    derived = {}
    for field_name, roots in _structure(parent.architecture, pruned).items():
        widths = tuple(_out_width(m) // unit for m, unit in roots)
        derived[field_name] = widths if isinstance(getattr(parent.config, field_name), tuple) else widths[0]
        if not isinstance(getattr(parent.config, field_name), tuple) and len(set(widths)) != 1:
            raise UnsupportedModelError(f"pruning left layers with different {field_name} {widths}; the config cannot express that")
    derived_config = dataclasses.replace(parent.config, **derived)
    if derived_config != target:
        raise UnsupportedModelError(f"pruning produced {derived} instead of the planned {widths(parent.architecture, target)}")
    rebuilt = build_model(parent.architecture, derived_config)
    try:
        rebuilt.load_state_dict(pruned.state_dict(), strict=True)
    except RuntimeError as exc:
        raise UnsupportedModelError(f"the pruned weights do not fit the architecture rebuilt from {derived}: {str(exc).splitlines()[0]}") from exc
    rebuilt.eval()
    pruned.eval()
    with torch.no_grad():
        inputs = example_inputs(parent.loaded.input_spec, batch_size=8)
        same = np.allclose(pruned(*inputs).numpy(), rebuilt(*inputs).numpy(), rtol=1e-4, atol=1e-5)
    if not same:
        raise UnsupportedModelError(f"the model rebuilt from {derived} does not reproduce the pruned model's outputs")
    return rebuilt


@functools.cache
def _torch_pruning_helpers():
    """Torch-Pruning subclasses, defined on first use so `import aiopt.compress.prune` stays light."""
    import torch
    import torch_pruning as tp
    from torch import nn

    class LSTMPruner(tp.pruner.function.LSTMPruner):
        """Removes hidden units of a single-layer nn.LSTM.

        Torch-Pruning 1.6's own version selects the gate rows of weight_hh and the biases with the
        unexpanded indices and cuts weight_ih along its input dim, so it fails (IndexError) or
        corrupts the cell. A unit j owns rows j + g*hidden (g = input, forget, cell, output gate) of
        weight_ih, weight_hh and both biases, and column j of weight_hh.
        """

        def prune_out_channels(self, layer: nn.LSTM, idxs):
            hidden = layer.hidden_size
            keep = torch.tensor(sorted(set(range(hidden)) - {int(i) for i in idxs}))
            rows = torch.cat([keep + gate * hidden for gate in range(4)])
            for name in layer._flat_weights_names:
                value = getattr(layer, name).detach().index_select(0, rows)
                if name.startswith("weight_hh"):
                    value = value.index_select(1, keep)
                setattr(layer, name, nn.Parameter(value))  # RNNBase.__setattr__ refreshes its flat weight list
            layer.hidden_size = len(keep)
            return layer

    class GroupImportance(tp.importance.GroupMagnitudeImportance):
        """Squared group L2 norm of each unit; adds the LSTM's own weights, which Torch-Pruning 1.6's
        importance skips (it would rank hidden units by the classifier's columns alone)."""

        def __init__(self):
            super().__init__(p=2, group_reduction="sum", normalizer=None)

        def __call__(self, group):
            scores = super().__call__(group)
            for dep, idxs in group:
                layer = dep.layer
                if isinstance(layer, nn.LSTM) and dep.pruning_fn == layer_pruner.prune_out_channels:
                    hidden = layer.hidden_size
                    own = sum(getattr(layer, n).detach().reshape(4, hidden, -1).pow(2).sum((0, 2)) for n in layer._flat_weights_names)
                    own = own + layer.weight_hh_l0.detach().pow(2).sum(0)
                    own = own[list(idxs)]
                    scores = own if scores is None else scores + own
            return scores

    layer_pruner = LSTMPruner()
    return layer_pruner, GroupImportance()
