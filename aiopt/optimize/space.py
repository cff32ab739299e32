"""The search space. A trial is a `Chain`: optional distillation into a narrower student of the
model's architecture (teacher: MODEL itself, the strongest teacher there is), optional channel
pruning with fine-tuning, then one quantize recipe with the runtime it ships for.

Distillation comes first so the student learns from MODEL rather than from a pruned copy;
pruning then fine-tunes whatever comes before it. Prune and distill need an aiopt checkpoint of
a reference architecture; for other models (ONNX, Hugging Face folders) only the recipe varies.
"""
from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass

from aiopt.data import DATASETS
from aiopt.errors import InputError
from aiopt.hardware import detect_cpu, int8_kernel_for
from aiopt.reference_models import get_entry

PRUNE_RATIOS = (0.0, 0.3, 0.5, 0.7)  # 0: no pruning
DISTILL_WIDTHS = (0.0, 0.45, 0.6)  # 0: no distillation
# Recipes (aiopt.quantize.registry.MEASURED) for --target cpu, in the order trials try them.
# "auto" is what `aiopt quantize` with no flags ships: every recipe measured here, each batch size
# routed to its fastest. It comes first: a chain ending in it is never slower than quantize's own
# choice for that model, and pruning or distillation before it then only adds speed.
AUTO = "auto"
CPU_RECIPES = (AUTO, "int8-static-per-channel", "int8-static-per-tensor", "int8-static-per-channel-full-range", "int8-dynamic",
               "int8-nncf-openvino", "int8-weights", "fp32-openvino", "fp32")
_NEEDS_CALIBRATION = ("int8-static-per-channel", "int8-static-per-tensor", "int8-static-per-channel-full-range", "int8-nncf-openvino")
# Weight-only INT8 changes nothing in a model without embedding tables or recurrent weights.
_WEIGHT_ONLY_ARCHITECTURES = ("lstm", "transformer")
PARAMS = ("distill", "prune", "quantize")


@dataclass(frozen=True)
class Chain:
    distill: float = 0.0  # student width; 0: none
    prune: float = 0.0  # channel pruning ratio; 0: none
    quantize: str = "int8-static-per-channel"

    @property
    def params(self) -> dict:
        return asdict(self)

    def label(self) -> str:
        steps = ([f"distill w{self.distill:g}"] if self.distill else []) + ([f"prune {self.prune:g}"] if self.prune else [])
        return " > ".join([*steps, self.quantize])


@dataclass(frozen=True)
class SearchSpace:
    distill: tuple[float, ...]
    prune: tuple[float, ...]
    quantize: tuple[str, ...]
    finetune_epochs: int
    distill_epochs: int | None

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def size(self) -> int:
        return len(self.distill) * len(self.prune) * len(self.quantize)

    def chains(self) -> list[Chain]:
        """Every chain of the space."""
        import itertools

        return [Chain(d, p, q) for d, p, q in itertools.product(self.distill, self.prune, self.quantize)]

    def suggest(self, trial) -> Chain:
        """The chain an Optuna trial (or a fixed trial) asks for."""
        return Chain(**{name: trial.suggest_categorical(name, list(getattr(self, name))) for name in PARAMS})

    def parse(self, text: str) -> Chain:
        """--try "prune=0.5,distill=0.45,quantize=int8-dynamic": unnamed steps are not used."""
        values: dict = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, value = part.partition("=")
            name = name.strip()
            if name not in PARAMS or not value:
                raise InputError(f"--try {text!r}: write name=value pairs joined by commas, names {', '.join(PARAMS)}")
            values[name] = value.strip() if name == "quantize" else _number(value, text)
        chain = Chain(**{**asdict(Chain(quantize=self.quantize[0])), **values})
        for name in PARAMS:
            if getattr(chain, name) not in getattr(self, name):
                choices = ", ".join(f"{c:g}" if isinstance(c, float) else c for c in getattr(self, name))
                raise InputError(f"--try {text!r}: {name}={getattr(chain, name)} is not in this search space ({choices})")
        return chain


def _number(value: str, text: str) -> float:
    try:
        return 0.0 if value.strip() == "none" else float(value)
    except ValueError:
        raise InputError(f"--try {text!r}: {value!r} is not a number") from None


def space_for(loaded, config) -> SearchSpace:
    """What can be tried on this model and this machine."""
    reference = loaded.format == "aiopt-checkpoint" and loaded.metadata.get("architecture") is not None
    architecture = loaded.metadata.get("architecture")
    if reference:
        recipe_epochs = get_entry(architecture).train_defaults.get("epochs", 30)
    else:
        recipe_epochs = 0
    finetune = config.finetune_epochs or max(1, recipe_epochs // 3)
    return SearchSpace(DISTILL_WIDTHS if reference else (0.0,), PRUNE_RATIOS if reference else (0.0,),
                       cpu_recipes(loaded.metadata, architecture, config.calibration is not None), finetune, config.distill_epochs)


def first_guesses(space: SearchSpace) -> list[Chain]:
    """What a search without --try starts with, so a short budget still reaches the chains that
    most often win on CPU: channel pruning by half, then by 70%, before quantize's own choice;
    then that choice alone (what `aiopt quantize` gives: the mark to beat)."""
    recipe = space.quantize[0]
    chains = [Chain(prune=ratio, quantize=recipe) for ratio in (0.5, 0.7) if ratio in space.prune]
    return [*chains, Chain(quantize=recipe)]


def cpu_recipes(metadata: dict, architecture: str | None, calibration_given: bool = False) -> tuple[str, ...]:
    """The quantize recipes this machine can build for this model."""
    has_calibration = calibration_given or ((metadata.get("dataset") or {}).get("name")) in DATASETS
    openvino = importlib.util.find_spec("openvino") is not None
    nncf = openvino and importlib.util.find_spec("nncf") is not None and importlib.util.find_spec("aiopt.quantize.recipes.openvino") is not None
    full_range_differs = int8_kernel_for(detect_cpu()).reduce_range
    recipes = []
    for name in CPU_RECIPES:
        if name in _NEEDS_CALIBRATION and not has_calibration:
            continue
        if (name == "fp32-openvino" and not openvino) or (name == "int8-nncf-openvino" and not nncf):
            continue
        if name == "int8-static-per-channel-full-range" and not full_range_differs:
            continue
        if name == "int8-weights" and architecture not in _WEIGHT_ONLY_ARCHITECTURES and "hf" not in metadata:
            continue
        recipes.append(name)
    return tuple(recipes)
