"""Quality of a model's outputs against a reference, chosen by what the output is.

Class logits are judged by accuracy when labels exist and by top-1 agreement with the
reference when they do not; embeddings and other continuous outputs by cosine similarity
(argmax over embedding dimensions means nothing). One `QualityFloor` says whether a
candidate is good enough; every step and the bench read the same numbers.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from aiopt.errors import InputError, UnsupportedModelError

METRICS = ("accuracy", "agreement", "cosine")
DEFAULT_MAX_ACCURACY_DROP = 0.005  # half a point: "equal quality" for class outputs
DEFAULT_MIN_COSINE = 0.99
# Below these a transformed model computes something else: refused before anything is written.
MIN_PARENT_AGREEMENT = 0.5
MIN_PARENT_COSINE = 0.8
_CLASS_HINTS = ("logit", "prob", "score", "class")
_EMBEDDING_HINTS = ("embed", "hidden", "feature", "pool", "vector")


def choose_metric(metadata: dict | None, output_name: str, output_shape, has_labels: bool, requested: str | None = None) -> tuple[str, str]:
    """(metric, why) for an artifact's first output. `requested` (--metric) wins, but accuracy
    needs labels."""
    if requested is not None:
        if requested not in METRICS:
            raise InputError(f"unknown --metric {requested!r}; choose one of {', '.join(METRICS)}")
        if requested == "accuracy" and not has_labels:
            raise InputError("--metric accuracy needs labels: pass --data FILE.npz with a y array, or use --metric agreement or cosine")
        return requested, "requested"
    kind, why = output_kind(metadata, output_name, output_shape)
    if kind == "classification":
        return ("accuracy", f"{why}, labels given") if has_labels else ("agreement", f"{why}, no labels: top-1 agreement with the reference")
    return "cosine", why


def output_kind(metadata: dict | None, output_name: str, output_shape) -> tuple[str, str]:
    """"classification" or "continuous", with the evidence."""
    metadata = metadata or {}
    task = (metadata.get("hf") or {}).get("task") or metadata.get("task")
    if task in ("embedding", "features"):
        return "continuous", f"the model's task is {task}"
    if task == "classification":
        return "classification", "the model is a classifier"
    if (metadata.get("dataset") or {}).get("num_classes") or (metadata.get("dataset") or {}).get("name"):
        return "classification", "the model records a classification dataset"
    name = (output_name or "").lower()
    if any(hint in name for hint in _EMBEDDING_HINTS):
        return "continuous", f"output {output_name!r} is named like an embedding"
    if any(hint in name for hint in _CLASS_HINTS) and output_shape is not None and len(output_shape) == 2:
        return "classification", f"output {output_name!r} is named like class scores"
    return "continuous", "nothing says the output is class scores: cosine similarity to the reference (pass --metric to override)"


def compare_outputs(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None = None) -> dict:
    """Every quality figure of `candidate` against `reference` on the same inputs."""
    from aiopt.evaluate import accuracy, agreement

    result = agreement(reference, candidate)
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    cand = candidate.reshape(len(candidate), -1).astype(np.float64)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cosine = np.where(norms > 0, (ref * cand).sum(axis=1) / np.maximum(norms, 1e-30), 1.0)
    result.update(mean_cosine=float(cosine.mean()) if len(cosine) else 1.0, min_cosine=float(cosine.min(initial=1.0)))
    if labels is not None:
        result.update(reference_accuracy=accuracy(reference, labels), accuracy=accuracy(candidate, labels))
        result["accuracy_drop"] = result["reference_accuracy"] - result["accuracy"]
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in result.items()}


@dataclass(frozen=True)
class QualityFloor:
    """What "equal quality" means for one metric."""

    metric: str
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP
    min_cosine: float = DEFAULT_MIN_COSINE

    def value(self, quality: dict) -> float:
        """The figure this floor judges (higher is better)."""
        return {"accuracy": quality.get("accuracy"), "agreement": quality.get("top1_agreement"),
                "cosine": quality.get("mean_cosine")}[self.metric]

    def problem(self, quality: dict) -> str | None:
        """Why `quality` misses the floor, or None when it meets it."""
        if not quality.get("finite", True):
            return "NaN or Inf outputs"
        if self.metric == "accuracy":
            drop = quality["accuracy_drop"]
            return None if drop <= self.max_accuracy_drop + 1e-9 else f"accuracy drop {drop * 100:.2f} pt > {self.max_accuracy_drop * 100:.2f} pt"
        if self.metric == "agreement":
            floor = 1 - self.max_accuracy_drop
            value = quality.get("top1_agreement", 1.0)
            return None if value >= floor - 1e-9 else f"top-1 agreement {value:.4f} < {floor:.4f}"
        value = quality["mean_cosine"]
        return None if value >= self.min_cosine else f"mean cosine {value:.4f} < {self.min_cosine:.4f}"

    def describe(self) -> str:
        return {"accuracy": f"accuracy within {self.max_accuracy_drop * 100:.2f} pt of the reference",
                "agreement": f"top-1 agreement >= {1 - self.max_accuracy_drop:.4f}",
                "cosine": f"mean cosine >= {self.min_cosine}"}[self.metric]

    def to_dict(self) -> dict:
        return {**asdict(self), "rule": self.describe()}


def check_against_parent(reference: np.ndarray, candidate: np.ndarray, what: str, metric: str = "agreement") -> dict:
    """Agreement of a transformed model with its parent; raises if the outputs are unusable
    (NaN/Inf, or predictions or directions that no longer resemble the parent's)."""
    result = compare_outputs(reference, candidate)
    if not result["finite"]:
        raise UnsupportedModelError(f"{what} produces NaN or Inf outputs; nothing was written")
    if metric == "cosine":
        if result["mean_cosine"] < MIN_PARENT_COSINE:
            raise UnsupportedModelError(f"{what} has a mean cosine similarity of only {result['mean_cosine']:.3f} to its parent's outputs; nothing was written")
    elif result.get("top1_agreement", 1.0) < MIN_PARENT_AGREEMENT:
        raise UnsupportedModelError(f"{what} agrees with its parent on only {result['top1_agreement']:.0%} of predictions; nothing was written")
    return result
