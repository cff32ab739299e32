"""Knowledge distillation: train a smaller student on a teacher's soft targets (Hinton et al. 2015).

loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, y)

The hard-label term is the recipe's own loss (label-smoothed cross-entropy), so alpha = 0 is
exactly the student trained alone. The teacher runs in eval mode without gradients on the same
augmented batch as the student (the recipe shifts 1-D signals at random; soft targets for the
unshifted signal would teach the wrong thing). The same student, from the same initial weights,
is also trained without the teacher under the same recipe, budget and seed, so the report shows
what the teacher bought.

The student is a registry spec (`cnn:tiny`), a width multiplier of the teacher's architecture
(`width=0.5`, in (0, 1]: distillation here is compression, so the student is never wider than
the teacher), or an aiopt checkpoint whose weights are the starting point. Width 0.5 keeps
slightly more than 1/4 of the parameters (the classifier shrinks only linearly); 0.45 stays below.

Hidden-state matching (`feature_weight`, FitNets) adds a regression of the student's
representation (projected to the teacher's width by a linear map trained alongside, then
dropped) onto the teacher's: every step's hidden state for the LSTM, which gives a small LSTM
the dense supervision along the sequence it lacks.

Defaults (DEFAULTS), measured on MNIST-1D with the base teachers, width-0.45 students (21-23% of
the parameters), two threads, paired seeds 0-2 (`python benchmarks/distill_seeds.py`; test
accuracy in %, distilled vs alone, same budget):
- LSTM (teacher 96.2), T=2/alpha=0.5 + feature matching, 60 epochs: 94.50 vs 94.20 (ahead on 2,
  tied on 1). At the recipe's 40 epochs: 93.4 vs 90.0, ahead on 3 of 3, but 2.8 below the
  teacher; without feature matching it was behind (87.1 vs 90.0, seed 0). The teacher speeds
  the small LSTM up more than it raises its ceiling (80 epochs, seed 0: 94.8 vs 94.9 alone).
- Transformer (teacher 96.1, 120 epochs), T=2/alpha=0.5 + feature matching: 95.23 vs 94.80
  (ahead on 2 of 3); without feature matching 94.6 (seed 0, = alone); blending inputs with
  mixup, the teacher labelling the blends, lowered it (Beta 0.2: 94.0, seed 0). Against the former
  60-epoch teacher (94.7) the student was no better than alone: a 1/5-size student trained 120
  epochs alone matched that teacher, so there was nothing to transfer.
- CNN (teacher 99.0), T=2/alpha=0.5: 98.67 vs 98.63 (ahead on 1 of 3): no measurable effect.
  The student alone is within 0.4 points of its teacher at 30 epochs and equal to it at 60 (99.0;
  distilled 98.9); T=4/alpha=0.7 gave 98.50, feature matching 98.3 and 98.8 vs 98.6 and 98.8, an
  8%-size student (width 0.25) 98.2 vs 98.4. Thread count alone moves these by the size of the
  effect (one thread: 98.74 vs 98.36 over 5 seeds).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiopt.artifacts import child_metadata, load_model, save_checkpoint
from aiopt.compress.common import dataset_for, load_reference_checkpoint
from aiopt.errors import InputError, UnsupportedModelError
from aiopt.evaluate import accuracy
from aiopt.fileio import check_output_path, sha256_file
from aiopt.measure.quality import check_against_parent
from aiopt.measure.torch_model import torch_logits
from aiopt.options import option
from aiopt.reference_models import build_model, config_to_dict, get_entry, make_config, model_names, parse_model_name
from aiopt.reference_models.train import TrainConfig, recipe_loss, set_seed, train_model


@dataclass(frozen=True)
class DistillConfig:
    student: str | None = option(None, "--student", "Student: a registry name with size (cnn:tiny) or an aiopt checkpoint to start from.")
    width: float | None = option(None, "--width", "Or: the teacher's architecture at this width (0.5 = half the channels).")
    # None: the student architecture's measured default (DEFAULTS below, module docstring).
    temperature: float | None = option(None, "--temperature", "Softmax temperature of the soft targets (default: the student architecture's, README).")
    alpha: float | None = option(None, "--alpha", "Weight of the soft-target loss, 1 - alpha on the labels (default: the student architecture's).")
    # Weight of hidden-state matching (FitNets): the student's representation, projected to the
    # teacher's width, regresses onto the teacher's; 0 turns it off. See FEATURE_LAYERS.
    feature_weight: float | None = option(None, "--feature-weight", "Weight of hidden-state matching (FitNets; student of the teacher's architecture); 0 turns it off. Default: 1 for LSTM/Transformer students, 0 for CNN.")
    epochs: int | None = option(None, "--epochs", "Training epochs, for the student with the teacher and alone (default: the student's recipe; an LSTM student 60).")
    lr: float | None = option(None, "--lr", "Learning rate (default: the student's recipe).")
    seed: int = option(0, "--seed", "Random seed.")
    dataset: str | None = option(None, "--dataset", "Training data (default: the teacher's dataset).")
    compare_alone: bool = option(True, "--baseline/--no-baseline", "Also train the student alone with the same budget, to show what distillation bought.")


# Per student architecture, measured on MNIST-1D (module docstring): hidden-state matching is
# what lifts the LSTM student; the CNN student gets nothing from it (nor from T=4). The LSTM
# student trains 60 epochs, not its recipe's 40: at 40 it stays 2.8 points below its teacher.
DEFAULTS: dict[str, dict[str, float]] = {
    "cnn": {"temperature": 2.0, "alpha": 0.5, "feature_weight": 0.0},
    "lstm": {"temperature": 2.0, "alpha": 0.5, "feature_weight": 1.0, "epochs": 60},
    "transformer": {"temperature": 2.0, "alpha": 0.5, "feature_weight": 1.0},
}
FALLBACK_DEFAULTS = {"temperature": 2.0, "alpha": 0.5, "feature_weight": 0.0}


def resolve_settings(config: DistillConfig, student_architecture: str, same_architecture: bool) -> DistillConfig:
    """`config` with every setting left as None replaced by the student architecture's default.
    Feature matching is a default only where the student has the teacher's architecture."""
    defaults = dict(DEFAULTS.get(student_architecture, FALLBACK_DEFAULTS))
    if not same_architecture:
        defaults["feature_weight"] = 0.0
    return dataclasses.replace(config, **{k: v for k, v in defaults.items() if getattr(config, k) is None})


@dataclass(frozen=True)
class DistillResult:
    path: str
    metadata: dict
    report: dict


@dataclass
class _Student:
    architecture: str
    size: str
    config: Any
    model: Any  # nn.Module holding the initial weights
    origin: dict  # how it was made: {"spec": ...} | {"width": ...} | {"checkpoint": ..., "sha256": ...}


def validate(config: DistillConfig) -> None:
    """Refuse a bad configuration before anything is loaded or trained."""
    if (config.student is None) == (config.width is None):
        raise InputError("pass exactly one of --student (a model such as cnn:tiny, or a checkpoint) and --width (e.g. 0.5)")
    if config.student is not None and not str(config.student).strip():
        raise InputError("--student is empty; pass a model such as cnn:tiny or a checkpoint path")
    if config.width is not None and not (0 < config.width <= 1 and math.isfinite(config.width)):
        raise InputError(f"--width must be in (0, 1] (a fraction of the teacher's widths), got {config.width}")
    if config.temperature is not None and not (config.temperature > 0 and math.isfinite(config.temperature)):
        raise InputError(f"--temperature must be greater than 0 (typically 2 to 8), got {config.temperature}")
    if config.alpha is not None and not 0 <= config.alpha <= 1:
        raise InputError(f"--alpha must be between 0 and 1 (the weight of the teacher's soft targets), got {config.alpha}")
    if config.feature_weight is not None and not (config.feature_weight >= 0 and math.isfinite(config.feature_weight)):
        raise InputError(f"--feature-weight must be 0 (off) or more, got {config.feature_weight}")
    if config.epochs is not None and config.epochs < 1:
        raise InputError(f"--epochs must be at least 1, got {config.epochs}")
    if config.lr is not None and not (config.lr > 0 and math.isfinite(config.lr)):
        raise InputError(f"--lr must be greater than 0, got {config.lr}")


def kd_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float, label_smoothing: float):
    """Hinton's distillation loss; the hard term is the recipe's label-smoothed cross-entropy."""
    import torch.nn.functional as F

    hard = recipe_loss(student_logits, labels, label_smoothing)
    if alpha == 0:
        return hard
    # KL(p_teacher || p_student) at temperature T, scaled by T^2 so its gradients keep the
    # magnitude of the hard term's as T changes.
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=-1),
        F.log_softmax(teacher_logits / temperature, dim=-1),
        reduction="batchmean", log_target=True,
    ) * temperature ** 2
    return alpha * soft + (1 - alpha) * hard


def distillation_loss(teacher, temperature: float, alpha: float, label_smoothing: float,
                      features: FeatureMatching | None = None) -> Callable:
    """A `train_model` loss_fn: the teacher (eval mode, no grad) sees the student's augmented batch."""
    import torch

    teacher.eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)

    def loss_fn(logits, labels, inputs):
        if alpha == 0 and features is None:  # the teacher's outputs would get no weight
            return kd_loss(logits, None, labels, temperature, alpha, label_smoothing)
        with torch.no_grad():
            teacher_logits = teacher(inputs)  # also fills features' teacher hook
        loss = kd_loss(logits, teacher_logits, labels, temperature, alpha, label_smoothing)
        return loss + features.loss() if features is not None else loss

    return loss_fn


# The representation matched by --feature-weight: the last feature map (cnn), the hidden state
# at every step (lstm: dense supervision along the sequence is what a small LSTM lacks), the
# tokens after the last block (transformer). Output channels/features are the last axis except
# for the CNN's (batch, channels, length...).
FEATURE_LAYERS = {"cnn": ("features", 1), "lstm": ("lstm", -1), "transformer": ("blocks", -1)}


class FeatureMatching:
    """Hidden-state matching (Romero et al. 2015, FitNets): a learned linear map takes the
    student's representation to the teacher's width, and the loss is its mean squared error
    to the teacher's, divided by the teacher's mean square so `weight` does not depend on scale.
    The projection is trained with the student and dropped afterwards."""

    def __init__(self, architecture: str, teacher, student, example, weight: float):
        import torch
        from torch import nn

        if architecture not in FEATURE_LAYERS:
            raise InputError(f"--feature-weight does not know where to match features of {architecture!r}; pass --feature-weight 0")
        layer, self.axis = FEATURE_LAYERS[architecture]
        self.weight, self._captured = weight, {}
        self._hooks = [getattr(model, layer).register_forward_hook(self._capture(role)) for role, model in (("teacher", teacher), ("student", student))]
        with torch.no_grad():
            teacher(example), student(example)
        got, wanted = self._captured["student"].shape, self._captured["teacher"].shape
        if _without(got, self.axis) != _without(wanted, self.axis):
            self.remove()
            raise InputError(
                f"feature matching needs the student's {layer} output to match the teacher's except in width: "
                f"{tuple(got)} vs {tuple(wanted)}; use a --width student or --feature-weight 0"
            )
        self.projection = nn.Linear(got[self.axis], wanted[self.axis])

    def _capture(self, role: str):
        def hook(module, inputs, output):
            self._captured[role] = output[0] if isinstance(output, tuple) else output
        return hook

    def loss(self):
        import torch.nn.functional as F

        teacher = self._captured["teacher"].detach()
        student = self.projection(self._captured["student"].movedim(self.axis, -1)).movedim(-1, self.axis)
        return self.weight * F.mse_loss(student, teacher) / (teacher.pow(2).mean() + 1e-8)

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


def _without(shape, axis: int) -> tuple:
    dims = list(shape)
    del dims[axis]
    return tuple(dims[1:])  # the batch may differ


def scale_config(architecture: str, config: Any, width: float) -> Any:
    """The teacher's config with its widths scaled by `width` (each at least 1).

    cnn: every block's channels. lstm: hidden_size. transformer: dim and mlp_dim, and the
    attention width heads * head_dim, taken from the number of heads first (DeiT's convention:
    smaller models have fewer heads of the same width) and from head_dim once one head is left.
    None of these architectures ties dim to heads * head_dim (q/k/v project to their own width).
    """

    def scaled(value: int) -> int:
        return max(1, int(value * width + 0.5))

    if architecture == "cnn":
        return dataclasses.replace(config, channels=tuple(scaled(c) for c in config.channels))
    if architecture == "lstm":
        return dataclasses.replace(config, hidden_size=scaled(config.hidden_size))
    if architecture == "transformer":
        heads = scaled(config.heads)
        head_dim = max(1, int(config.heads * config.head_dim * width / heads + 0.5))
        return dataclasses.replace(config, dim=scaled(config.dim), mlp_dim=scaled(config.mlp_dim), heads=heads, head_dim=head_dim)
    raise InputError(f"--width does not know how to narrow architecture {architecture!r}; pass --student with a model or checkpoint")


def _student(config: DistillConfig, teacher, dataset) -> _Student:
    if config.width is not None:
        student_config = scale_config(teacher.architecture, teacher.config, config.width)
        size = f"{teacher.loaded.metadata.get('size', 'base')}*{config.width:g}"
        set_seed(config.seed)
        model = build_model(teacher.architecture, student_config)
        return _Student(teacher.architecture, size, student_config, model, {"width": config.width})
    spec = str(config.student)
    if Path(spec).is_file():
        loaded = load_reference_checkpoint(spec, "distill (student)")
        _check_student_input(spec, loaded.loaded.metadata, teacher, dataset)

        origin = {"checkpoint": spec, "sha256": sha256_file(spec)}
        return _Student(loaded.architecture, loaded.loaded.metadata.get("size", "custom"), loaded.config, loaded.model, origin)
    if spec.partition(":")[0] not in model_names():
        raise InputError(
            f"student {spec!r} is neither a model ({', '.join(model_names())}, optionally :tiny or :base) nor an existing checkpoint; check the name or path"
        )
    name, size = parse_model_name(spec)
    student_config = make_config(spec, dataset.sample_shape, dataset.num_classes)
    set_seed(config.seed)
    try:
        model = build_model(name, student_config)
    except ValueError as exc:  # e.g. a sequence length the architecture cannot split
        raise InputError(f"student {spec} cannot take the teacher's input {dataset.sample_shape}: {exc}") from exc
    return _Student(name, size, student_config, model, {"spec": f"{name}:{size}"})


def _input_shapes(metadata: dict) -> list[tuple]:
    return [tuple(s.get("shape", ()))[1:] for s in metadata.get("inputs") or []]


def _check_student_input(path: str, metadata: dict, teacher, dataset) -> None:
    """A student checkpoint must take the teacher's samples and predict the same classes."""
    teacher_meta = teacher.loaded.metadata
    wanted = _input_shapes(teacher_meta) or [dataset.sample_shape]
    got = _input_shapes(metadata)
    if got != wanted:
        raise InputError(
            f"student {path} takes inputs of shape {_shapes_text(got)} but teacher takes {_shapes_text(wanted)}; "
            "pass a student trained on the teacher's data, or a model spec such as cnn:tiny"
        )
    wanted_classes = teacher_meta.get("num_classes", dataset.num_classes)
    if metadata.get("num_classes") != wanted_classes:
        raise InputError(
            f"student {path} predicts {metadata.get('num_classes')} classes but teacher takes {wanted_classes}; "
            "pass a student trained on the teacher's data, or a model spec such as cnn:tiny"
        )


def _shapes_text(shapes: list[tuple]) -> str:
    return "; ".join("x".join(map(str, s)) for s in shapes) or "(unknown)"


def distill_checkpoint(
    teacher_path: str | os.PathLike,
    output: str | os.PathLike,
    config: DistillConfig,
    force: bool = False,
    on_progress: Callable[[str, Any], None] | None = None,
) -> DistillResult:
    """Distill the teacher checkpoint into the student `config` describes; write the student to `output`.

    `on_progress(phase, stats)` is called after every epoch with phase "distill" or "alone"
    and a train.EpochStats.
    """
    import torch

    validate(config)
    out = check_output_path(output, teacher_path, config.student, force=force)
    teacher = load_reference_checkpoint(teacher_path, "distill")
    data = dataset_for(teacher.loaded.metadata, config.dataset, "distill")
    if teacher.loaded.metadata.get("num_classes", data.num_classes) != data.num_classes:
        raise InputError(
            f"dataset {data.name} has {data.num_classes} classes but teacher {teacher_path} predicts "
            f"{teacher.loaded.metadata['num_classes']}; pass the teacher's own --dataset"
        )
    student = _student(config, teacher, data)
    config = resolve_settings(config, student.architecture, student.architecture == teacher.architecture)

    recipe = get_entry(student.architecture).train_defaults
    overrides = {k: v for k, v in (("epochs", config.epochs), ("lr", config.lr)) if v is not None}
    train_config = TrainConfig(**{**recipe, "seed": config.seed, **overrides})
    initial = copy.deepcopy(student.model.state_dict())

    def progress(phase: str):
        return (lambda stats: on_progress(phase, stats)) if on_progress else None

    teacher_logits = torch_logits(teacher.model, data.x_test)
    teacher_accuracy = accuracy(teacher_logits, data.y_test)
    features = None
    if config.feature_weight > 0:
        if student.architecture != teacher.architecture:
            raise InputError(f"feature matching needs a student of the teacher's architecture ({teacher.architecture}), not "
                             f"{student.architecture}; use --width or --feature-weight 0")
        example = torch.from_numpy(data.x_train[:2])
        features = FeatureMatching(student.architecture, teacher.model, student.model, example, config.feature_weight)
    loss_fn = distillation_loss(teacher.model, config.temperature, config.alpha, train_config.label_smoothing, features)
    try:
        summary = train_model(student.model, data, train_config, progress("distill"), loss_fn=loss_fn,
                                    extra_modules=(features.projection,) if features else ())
    finally:
        if features:
            features.remove()
    student_logits = torch_logits(student.model, data.x_test)
    try:
        agreement = check_against_parent(teacher_logits, student_logits, f"the distilled student ({student.architecture}:{student.size})")
    except UnsupportedModelError as exc:
        raise UnsupportedModelError(f"{exc}; train longer (--epochs), lower --lr or choose a larger student") from exc
    student_accuracy = accuracy(student_logits, data.y_test)

    alone_accuracy = alone_seconds = None
    if config.compare_alone:
        alone = copy.deepcopy(student.model)
        alone.load_state_dict(initial)
        alone_summary = train_model(alone, data, train_config, progress("alone"))
        alone_accuracy = accuracy(torch_logits(alone, data.x_test), data.y_test)
        alone_seconds = alone_summary["train_seconds"]

    teacher_params = sum(p.numel() for p in teacher.model.parameters())
    student_params = sum(p.numel() for p in student.model.parameters())
    report = {
        "teacher": str(teacher_path),
        "teacher_accuracy": teacher_accuracy,
        "student_accuracy": student_accuracy,
        "student_alone_accuracy": alone_accuracy,
        "gain_over_alone": None if alone_accuracy is None else round(student_accuracy - alone_accuracy, 6),
        "teacher_params": teacher_params,
        "student_params": student_params,
        "param_ratio": round(student_params / teacher_params, 6),
        "temperature": config.temperature,
        "alpha": config.alpha,
        "feature_weight": config.feature_weight,
        "epochs": train_config.epochs,
        "lr": train_config.lr,
        "seed": config.seed,
        "dataset": data.name,
        "train_seconds": summary["train_seconds"],
        "student_alone_seconds": alone_seconds,
        "agreement_with_parent": agreement,
        "student": {
            "architecture": student.architecture, "size": student.size,
            "config": config_to_dict(student.config), **student.origin,
        },
    }
    metadata = child_metadata(
        teacher.loaded, "distill",
        architecture=student.architecture,
        size=student.size,
        config=config_to_dict(student.config),
        params_count=student_params,
        dataset=data.describe(),
        metrics={"accuracy": student_accuracy, "split": "test", "samples": len(data.y_test)},
        agreement_with_parent=agreement,
        distillation=report,
        training={
            **dataclasses.asdict(train_config), **summary, "loss": "distillation",
            "temperature": config.temperature, "alpha": config.alpha, "feature_weight": config.feature_weight,
            "torch_version": torch.__version__, "threads": torch.get_num_threads(),
        },
    )
    save_checkpoint(student.model, metadata, out)
    saved = load_model(out)  # the written file must rebuild the student, not the teacher
    return DistillResult(str(out), saved.metadata, report)
