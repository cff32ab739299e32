"""Quality of a model's outputs against a reference, judged on every output by what it is.

Class logits are judged by accuracy when labels exist and by top-1 agreement with the
reference when they do not (only when the class axis has more than one element);
probabilities and scores by the decisions that flip at a threshold; dense maps by the
cosine over the whole tensor and their per-element error; embeddings by cosine per row;
regressions and recurrent state by relative error. `judge_outputs` picks each output's kind
once (from its shape, dtype, name and the reference's values); `compare_all` measures a
candidate on every output; one `QualityFloor` says whether it is good enough: the worst
output decides.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from aiopt.errors import InputError, UnsupportedModelError
from aiopt.evaluate import accuracy, agreement

METRICS = ("accuracy", "agreement", "cosine")
# What an output can be; `--metric OUTPUT=KIND[@threshold]` names one of these.
KINDS = ("class", "probability", "map", "embedding", "regression", "state", "exact")
DEFAULT_THRESHOLD = 0.5
DEFAULT_MAX_FLIP_RATE = 0.01  # decisions (probability >= threshold) that may flip
DEFAULT_MAX_RELATIVE_ERROR = 0.05  # ||candidate - reference|| / ||reference|| for regressions and state
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
class OutputJudge:
    """How one output is judged: its kind, the evidence, and a decision threshold for scores."""

    name: str
    kind: str
    why: str
    threshold: float | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def parse_metric_options(values) -> tuple[str | None, dict[str, tuple[str, float | None]]]:
    """`--metric` values: a legacy metric (accuracy, agreement, cosine) for the first output,
    and `OUTPUT=KIND[@threshold]` overrides, one per output."""
    legacy, overrides = None, {}
    for value in ([values] if isinstance(values, str) else list(values or ())):
        if "=" not in value:
            if value not in METRICS:
                raise InputError(f"unknown --metric {value!r}; choose one of {', '.join(METRICS)}, or OUTPUT=KIND[@threshold] "
                                 f"with KIND one of {', '.join(KINDS)}")
            legacy = value
            continue
        name, _, kind = value.partition("=")
        kind, _, threshold = kind.partition("@")
        if not name or kind not in KINDS:
            raise InputError(f"--metric {value!r} is malformed; write OUTPUT=KIND[@threshold] with KIND one of {', '.join(KINDS)} (e.g. prob=probability@0.5)")
        try:
            level = float(threshold) if threshold else None
        except ValueError:
            raise InputError(f"--metric {value!r}: the threshold {threshold!r} is not a number (e.g. prob=probability@0.5)") from None
        overrides[name] = (kind, level)
    return legacy, overrides


def judge_outputs(metadata: dict | None, output_specs, reference_outputs, has_labels: bool, requested=None,
                  state_outputs=()) -> tuple[OutputJudge, ...]:
    """Each output's kind, decided once from what the reference produced. `requested`: the
    --metric values; `state_outputs`: outputs fed back as recurrent state."""
    legacy, overrides = parse_metric_options(requested)
    names = [getattr(s, "name", str(s)) for s in output_specs]
    unknown = [n for n in overrides if n not in names]
    if unknown:
        raise InputError(f"--metric names output {unknown[0]!r}, which the model does not have; its outputs: {', '.join(names)}")
    judges = []
    for index, (name, values) in enumerate(zip(names, reference_outputs)):
        values = np.asarray(values)
        if name in overrides:
            kind, threshold = overrides[name]
            if kind == "class" and not _has_class_axis(values):
                raise InputError(f"--metric {name}=class: output {name!r} has shape {values.shape}, no class axis with more than one element")
            judges.append(OutputJudge(name, kind, "requested", threshold if threshold is not None else _default_threshold(kind)))
        elif index == 0 and legacy is not None:
            if legacy == "accuracy" and not has_labels:
                raise InputError("--metric accuracy needs labels: pass --data FILE.npz with a y array, or use --metric agreement or cosine")
            judges.append(OutputJudge(name, "class" if legacy in ("accuracy", "agreement") else "embedding", "requested"))
        elif name in state_outputs:
            judges.append(OutputJudge(name, "state", "fed back as recurrent state: relative error (and the streaming check)"))
        else:
            judges.append(_judge_one(metadata if index == 0 else None, name, values))
    return tuple(judges)


def _default_threshold(kind: str) -> float | None:
    return DEFAULT_THRESHOLD if kind == "probability" else None


def _has_class_axis(values: np.ndarray) -> bool:
    return values.ndim >= 2 and values.shape[-1] > 1


def _judge_one(metadata: dict | None, name: str, values: np.ndarray) -> OutputJudge:
    """The kind of one output from its metadata (first output only), dtype, name and values."""
    lowered = name.lower()
    if values.dtype.kind in "iub":
        return OutputJudge(name, "exact", f"{name!r} holds {values.dtype} values: the share equal to the reference")
    in_unit = values.size > 0 and bool(np.isfinite(values).all()) and values.min() >= 0 and values.max() <= 1
    kind, why = output_kind(metadata, name, values.shape)
    if kind == "classification" and why.startswith("the model") and _has_class_axis(values):
        return OutputJudge(name, "class", why)
    if kind == "continuous" and not why.startswith("nothing"):
        return OutputJudge(name, "embedding", why)
    if in_unit:
        if values.ndim >= 3 or (values.ndim == 2 and values.shape[-1] > 1 and not np.allclose(values.sum(-1), 1, atol=1e-3)
                                and any(h in lowered for h in ("map", "mask", "heat", "seg"))):
            return OutputJudge(name, "map", f"{name!r} is a dense map of values in [0, 1]: whole-tensor cosine, per-element error and "
                                            f"flips at {DEFAULT_THRESHOLD}", DEFAULT_THRESHOLD)
        if _has_class_axis(values) and np.allclose(values.sum(-1), 1, atol=1e-3):
            return OutputJudge(name, "class", f"{name!r} sums to 1 over its last axis: class probabilities, top-1 agreement")
        return OutputJudge(name, "probability", f"{name!r} holds scores in [0, 1]: decisions that flip at {DEFAULT_THRESHOLD}, "
                                                "mean and max abs error", DEFAULT_THRESHOLD)
    if kind == "classification" and _has_class_axis(values):
        return OutputJudge(name, "class", why)
    if values.ndim >= 3:
        return OutputJudge(name, "map", f"{name!r} is a dense output of rank {values.ndim}: whole-tensor cosine and per-element error")
    if values.ndim <= 1 or values.shape[-1] == 1:
        return OutputJudge(name, "regression", f"{name!r} has one value per sample: relative error")
    return OutputJudge(name, "embedding", "nothing says the output is class scores: cosine similarity to the reference (pass --metric to override)")


def compare_one(reference: np.ndarray, candidate: np.ndarray, judge: OutputJudge, labels: np.ndarray | None = None) -> dict:
    """The figures of one output judged as `judge.kind`."""
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    if reference.shape != candidate.shape:
        raise InputError(f"output {judge.name!r} has different shapes: {reference.shape} vs {candidate.shape}")
    ref, cand = reference.astype(np.float64), candidate.astype(np.float64)
    diff = np.abs(ref - cand)
    result = {"kind": judge.kind, "finite": bool(np.isfinite(cand).all()), "max_abs_error": float(diff.max(initial=0.0)),
              "mean_abs_error": float(diff.mean()) if diff.size else 0.0}
    if judge.kind == "class":
        result["top1_agreement"] = float((ref.argmax(-1) == cand.argmax(-1)).mean())
        if labels is not None and ref.ndim == 2:
            result.update(reference_accuracy=accuracy(reference, labels), accuracy=accuracy(candidate, labels))
            result["accuracy_drop"] = result["reference_accuracy"] - result["accuracy"]
    elif judge.kind == "exact":
        result["match_rate"] = float((reference == candidate).mean()) if reference.size else 1.0
    elif judge.kind == "embedding":
        rows_ref, rows_cand = ref.reshape(len(ref), -1) if ref.ndim else ref.reshape(1, -1), cand.reshape(len(cand), -1) if cand.ndim else cand.reshape(1, -1)
        cosine = _cosine_rows(rows_ref, rows_cand)
        result.update(mean_cosine=float(cosine.mean()) if len(cosine) else 1.0, min_cosine=float(cosine.min(initial=1.0)))
    elif judge.kind in ("regression", "state"):
        norm = float(np.linalg.norm(ref))
        result["relative_error"] = float(np.linalg.norm(ref - cand) / norm) if norm > 0 else float(np.linalg.norm(cand) > 0)
    if judge.kind == "map":
        result["cosine"] = float(_cosine_rows(ref.reshape(1, -1), cand.reshape(1, -1))[0])
    if judge.kind in ("probability", "map") and judge.threshold is not None:
        flips = (ref >= judge.threshold) != (cand >= judge.threshold)
        result.update(threshold=judge.threshold, flips=int(flips.sum()), flip_rate=float(flips.mean()) if flips.size else 0.0,
                      decisions=int(flips.size))
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in result.items()}


def _cosine_rows(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    both_zero = (np.linalg.norm(ref, axis=1) == 0) & (np.linalg.norm(cand, axis=1) == 0)
    return np.where(norms > 0, (ref * cand).sum(axis=1) / np.maximum(norms, 1e-30), np.where(both_zero, 1.0, 0.0))


def compare_all(reference_outputs, candidate_outputs, judges: tuple[OutputJudge, ...], labels: np.ndarray | None = None) -> dict:
    """Every output judged by its kind (`outputs`), plus the first output's figures at the top
    level (what reports and older readers show); labels apply to the first output."""
    first_reference, first_candidate = np.atleast_1d(reference_outputs[0]), np.atleast_1d(candidate_outputs[0])
    result = compare_outputs(first_reference, first_candidate, labels if judges and judges[0].kind == "class" else None)
    result["outputs"] = {j.name: compare_one(r, c, j, labels if index == 0 else None)
                         for index, (j, r, c) in enumerate(zip(judges, reference_outputs, candidate_outputs))}
    result["finite"] = all(o["finite"] for o in result["outputs"].values())
    return result


# The figure of each kind a report shows (higher is better), and its short label.
_FIGURE = {"class": ("top1_agreement", "top-1"), "probability": ("flip_rate", "flips"), "map": ("cosine", "cos"),
           "embedding": ("mean_cosine", "cos"), "regression": ("relative_error", "rel err"), "state": ("relative_error", "rel err"),
           "exact": ("match_rate", "equal")}


@dataclass(frozen=True)
class QualityFloor:
    """What "equal quality" means: for one metric (the first output), or for every output
    (`judges`), where the worst output decides."""

    metric: str
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP
    min_cosine: float = DEFAULT_MIN_COSINE
    judges: tuple[OutputJudge, ...] = ()
    max_flip_rate: float = DEFAULT_MAX_FLIP_RATE
    max_relative_error: float = DEFAULT_MAX_RELATIVE_ERROR

    def value(self, quality: dict) -> float:
        """The figure this floor judges on the first output (higher is better)."""
        if self.judges and quality.get("outputs"):
            first = quality["outputs"][self.judges[0].name]
            return _higher_is_better(first, self.metric == "accuracy")
        return {"accuracy": quality.get("accuracy"), "agreement": quality.get("top1_agreement"),
                "cosine": quality.get("mean_cosine")}[self.metric]

    def problem(self, quality: dict) -> str | None:
        """Why `quality` misses the floor, or None when it meets it. With judges, every output
        is judged, chunk by chunk and (where measured) streaming: the worst decides."""
        if not quality.get("finite", True):
            return "NaN or Inf outputs"
        if not self.judges or "outputs" not in quality:
            return self._legacy_problem(quality)
        problems = [f"{j.name}: {p}" for j in self.judges if (p := self.output_problem(j, quality["outputs"].get(j.name)))]
        streaming = quality.get("streaming") or {}
        problems += [f"{j.name} streaming: {p}" for j in self.judges if j.name in streaming.get("outputs", {})
                     and (p := self.output_problem(j, streaming["outputs"][j.name]))]
        return "; ".join(problems) or None

    def output_problem(self, judge: OutputJudge, figures: dict | None) -> str | None:
        if figures is None:
            return None
        if not figures.get("finite", True):
            return "NaN or Inf values"
        kind = judge.kind
        if kind == "class":
            if figures.get("accuracy_drop") is not None and self.metric == "accuracy" and judge is self.judges[0]:
                drop = figures["accuracy_drop"]
                return None if drop <= self.max_accuracy_drop + 1e-9 else f"accuracy drop {drop * 100:.2f} pt > {self.max_accuracy_drop * 100:.2f} pt"
            floor, value = 1 - self.max_accuracy_drop, figures["top1_agreement"]
            return None if value >= floor - 1e-9 else f"top-1 agreement {value:.4f} < {floor:.4f}"
        if kind == "exact":
            floor, value = 1 - self.max_accuracy_drop, figures["match_rate"]
            return None if value >= floor - 1e-9 else f"equal values {value:.4f} < {floor:.4f}"
        if kind == "embedding":
            value = figures["mean_cosine"]
            return None if value >= self.min_cosine else f"mean cosine {value:.4f} < {self.min_cosine:.4f}"
        if kind in ("regression", "state"):
            value = figures["relative_error"]
            return None if value <= self.max_relative_error else f"relative error {value:.4f} > {self.max_relative_error:.4f}"
        problems = []
        if kind == "map" and figures["cosine"] < self.min_cosine:
            problems.append(f"cosine {figures['cosine']:.4f} < {self.min_cosine:.4f}")
        if figures.get("flip_rate") is not None and figures["flip_rate"] > self.max_flip_rate + 1e-12:
            problems.append(f"{figures['flip_rate']:.2%} of decisions flip at {figures['threshold']:g} > {self.max_flip_rate:.2%} "
                            f"(max abs error {figures['max_abs_error']:.3f})")
        return "; ".join(problems) or None

    def _legacy_problem(self, quality: dict) -> str | None:
        if self.metric == "accuracy":
            drop = quality["accuracy_drop"]
            return None if drop <= self.max_accuracy_drop + 1e-9 else f"accuracy drop {drop * 100:.2f} pt > {self.max_accuracy_drop * 100:.2f} pt"
        if self.metric == "agreement":
            floor = 1 - self.max_accuracy_drop
            value = quality.get("top1_agreement", 1.0)
            return None if value >= floor - 1e-9 else f"top-1 agreement {value:.4f} < {floor:.4f}"
        value = quality["mean_cosine"]
        return None if value >= self.min_cosine else f"mean cosine {value:.4f} < {self.min_cosine:.4f}"

    def summary(self, quality: dict | None) -> str:
        """One short cell: each output's figure (and its streaming figure), e.g. `prob flips 0.20% (stream 0.41%), stateN rel err 0.0123`."""
        if not quality:
            return "-"
        if not self.judges or "outputs" not in quality:
            value = self.value(quality)
            return "-" if value is None else f"{self.metric} {value:.4f}"
        streaming = (quality.get("streaming") or {}).get("outputs", {})
        parts = []
        for judge in self.judges:
            figures = quality["outputs"].get(judge.name)
            if figures is None:
                continue
            text = f"{judge.name} {_figure_text(figures, self.metric == 'accuracy' and judge is self.judges[0])}"
            if judge.name in streaming:
                text += f" (stream {_figure_text(streaming[judge.name], False).split(' ', 1)[-1]})"
            parts.append(text)
        return ", ".join(parts)

    def describe(self) -> str:
        if self.judges:
            rules = {"class": f"top-1 agreement >= {1 - self.max_accuracy_drop:.4f}" if self.metric != "accuracy"
                     else f"accuracy within {self.max_accuracy_drop * 100:.2f} pt",
                     "probability": f"<= {self.max_flip_rate:.0%} decisions flipped", "map": f"cosine >= {self.min_cosine}",
                     "embedding": f"mean cosine >= {self.min_cosine}", "regression": f"relative error <= {self.max_relative_error}",
                     "state": f"relative error <= {self.max_relative_error}", "exact": f"equal values >= {1 - self.max_accuracy_drop:.4f}"}
            return "every output: " + "; ".join(f"{j.name} ({j.kind}) {rules[j.kind]}" for j in self.judges)
        return {"accuracy": f"accuracy within {self.max_accuracy_drop * 100:.2f} pt of the reference",
                "agreement": f"top-1 agreement >= {1 - self.max_accuracy_drop:.4f}",
                "cosine": f"mean cosine >= {self.min_cosine}"}[self.metric]

    def to_dict(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if k != "judges"}
        if self.judges:
            data["outputs"] = [j.to_dict() for j in self.judges]
        return {**data, "rule": self.describe()}


def metric_for(judge: OutputJudge, has_labels: bool) -> str:
    """The metric name of the first output's judge (reports, --json `metric`): accuracy,
    agreement and cosine as before; flips, map-cosine, relative-error, exact for the others."""
    if judge.kind == "class":
        return "accuracy" if has_labels else "agreement"
    return {"embedding": "cosine", "probability": "flips", "map": "map-cosine", "regression": "relative-error",
            "state": "relative-error", "exact": "exact"}[judge.kind]


def _higher_is_better(figures: dict, accuracy: bool) -> float:
    key, _ = _FIGURE[figures["kind"]]
    if accuracy and figures.get("accuracy") is not None:
        return figures["accuracy"]
    value = figures[key]
    return 1 - value if key in ("flip_rate", "relative_error") else value


def _figure_text(figures: dict, accuracy: bool) -> str:
    if accuracy and figures.get("accuracy") is not None:
        return f"acc {figures['accuracy']:.4f}"
    key, label = _FIGURE[figures["kind"]]
    value = figures[key]
    return f"{label} {value:.2%}" if key == "flip_rate" else f"{label} {value:.4f}"


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
