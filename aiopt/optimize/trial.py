"""One trial: run a chain with the same steps the CLI commands run (aiopt.steps), under
OUTDIR/trials/NNNN/, then measure the artifact that would ship, on the runtime it ships on.

A step that already breaks the quality budget ends the trial as pruned (optuna.TrialPruned):
the rest of the chain could only lose more. Distillation and pruning outputs are kept in
OUTDIR/cache/, keyed by their input and config, so another chain that starts the same way (or
a resumed run) reuses them instead of training again.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from aiopt.artifacts import artifact_sha256, copy_artifact
from aiopt.compress.distill import DistillConfig
from aiopt.compress.prune import PruneConfig
from aiopt.errors import CheckFailedError, UnsupportedModelError
from aiopt.evaluate import accuracy
from aiopt.fileio import write_bytes_atomic
from aiopt.measure.deployed import measure_deployed
from aiopt.optimize.space import AUTO, Chain, SearchSpace
from aiopt.quantize.run import QuantizeConfig
from aiopt.steps import StepOutcome, run_step

CACHED_STEPS = ("distill", "prune")  # training steps: worth keeping between trials


class TimeBudgetSpent(Exception):
    """The --time-budget ran out between two steps of a trial."""

    def __init__(self, step: str):
        super().__init__(f"the time budget ran out before {step}")
        self.step = step


@dataclass
class Reference:
    """The yardstick: MODEL as FP32 ONNX on ONNX Runtime, its outputs on the held-out data."""

    path: Path
    runner: object
    outputs: object  # np.ndarray
    data: object  # evaluate.EvalData
    floor: object  # measure.quality.QualityFloor
    metric_reason: str

    @property
    def accuracy(self) -> float | None:
        return accuracy(self.outputs, self.data.labels) if self.data.labels is not None else None


@dataclass
class TrialResult:
    chain: Chain
    folder: Path
    steps: list = field(default_factory=list)  # StepOutcome
    measured: object | None = None  # measure.deployed.Deployed

    @property
    def artifact(self) -> str:
        return self.steps[-1].path


class ChainRunner:
    def __init__(self, model: Path, outdir: Path, space: SearchSpace, config, reference: Reference, say: Callable[[str], None]):
        self.model, self.outdir, self.space, self.config = model, outdir, space, config
        self.reference, self.say = reference, say
        self.cache = outdir / "cache"

    def folder(self, number: int) -> Path:
        """OUTDIR/trials/NNNN; a named study's trials in a folder of its own, so studies may share OUTDIR."""
        trials = self.outdir / "trials"
        return (trials / self.config.study if self.config.study else trials) / f"{number:04d}"

    def run(self, chain: Chain, number: int, deadline: float | None, result: TrialResult | None = None) -> TrialResult:
        """Run `chain` as trial `number`. `result` collects the steps as they finish, so a caller
        that catches TrialPruned still has them."""
        folder = self.folder(number)
        if folder.exists():  # an interrupted attempt under this number
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        result = result if result is not None else TrialResult(chain, folder)
        result.folder = folder
        source = str(self.model)
        for name, config in self.plan(chain):
            _check_deadline(deadline, name)
            index = len(result.steps) + 1
            suffix = ".onnx" if name == "quantize" else ".pt"
            if name == "quantize":
                config = replace(config, **self._quantize_floor(result.steps))
            outcome = self._step(name, source, folder / f"{index}-{name}{suffix}", config)
            result.steps.append(outcome)
            self._check_budget(name, outcome)
            source = outcome.path
        _check_deadline(deadline, "measuring")

        result.measured = measure_deployed(source, self.reference.runner, self.reference.outputs, self.reference.data, self.reference.floor,
                                           self.config.batch_sizes, self.config.latency, self.config.threads)
        return result

    def plan(self, chain: Chain) -> list[tuple[str, object]]:
        """(step, config) in order; the quantize floor is filled in when the steps before it are known."""
        steps: list[tuple[str, object]] = []
        if chain.distill:
            steps.append(("distill", DistillConfig(width=chain.distill, epochs=self.space.distill_epochs, seed=self.config.seed, compare_alone=False)))
        if chain.prune:
            steps.append(("prune", PruneConfig(method="channel", sparsity=chain.prune, finetune_epochs=self.space.finetune_epochs, seed=self.config.seed)))
        # An OpenVINO recipe is asked for with --backend openvino, so it ships on OpenVINO; an ONNX
        # Runtime recipe leaves quantize free to ship it on either runtime, or both by batch size;
        # "auto" is quantize with no flags (every recipe, the fastest per batch size).
        backend = "openvino" if "openvino" in chain.quantize else "auto"
        candidates = () if chain.quantize == AUTO else (chain.quantize,)
        steps.append(("quantize", QuantizeConfig(candidates=candidates, backend=backend, batch_sizes=tuple(self.config.batch_sizes),
                                                 data=self.config.data, calibration=self.config.calibration, seq_len=self.config.seq_len,
                                                 seed=self.config.seed, objective="latency")))  # size is weighed on the study's front
        return steps

    # ------------------------------------------------------------ the budget, step by step
    def _drop_so_far(self, steps: list) -> float:
        """Accuracy lost so far against MODEL (test split), from what the steps measured."""
        reference = self.reference.accuracy
        measured = [s.record.get("accuracy") for s in steps if s.record.get("accuracy") is not None]
        return 0.0 if reference is None or not measured else reference - measured[-1]

    def _quantize_floor(self, steps: list) -> dict:
        """The quantize step judges its recipe against its own parent: it gets what is left of
        the budget (cosine budgets: the same floor, since cosines do not add up)."""
        floor = self.reference.floor
        if floor.metric == "cosine":
            return {"metric": "cosine", "min_cosine": floor.min_cosine}
        return {"max_accuracy_drop": round(max(0.0, floor.max_accuracy_drop - self._drop_so_far(steps)), 6)}

    def _check_budget(self, name: str, outcome) -> None:
        import optuna

        floor = self.reference.floor
        accuracy = outcome.record.get("accuracy")
        if name in CACHED_STEPS and floor.metric == "accuracy" and accuracy is not None and self.reference.accuracy is not None:
            drop = self.reference.accuracy - accuracy
            if drop > floor.max_accuracy_drop + 1e-9:
                raise optuna.TrialPruned(f"after {name}: accuracy drop {drop * 100:.2f} pt > budget {floor.max_accuracy_drop * 100:.2f} pt")

    # ------------------------------------------------------------ steps, with the cache
    def _step(self, name: str, source: str, output: Path, config):
        import optuna


        if name not in CACHED_STEPS:
            try:
                return run_step(name, source, output, config, self.say)
            except CheckFailedError as exc:  # no recipe meets what is left of the budget
                raise optuna.TrialPruned(f"{name}: {exc}") from None
        entry = self.cache / _cache_key(name, source, config)
        saved = entry / "outcome.json"
        if not saved.exists():
            entry.mkdir(parents=True, exist_ok=True)
            try:
                outcome = run_step(name, source, entry / output.name, config, self.say)
            except UnsupportedModelError as exc:  # the step's own guard: its model no longer resembles its parent
                _write_json(saved, {"broke": f"{name}: {exc}"})
            else:
                _write_json(saved, outcome.to_dict())
        fields = json.loads(saved.read_text())
        if "broke" in fields:
            raise optuna.TrialPruned(fields["broke"])
        copy_artifact(fields["path"], output, link=True, force=True)  # the trial folder is aiopt's own
        kept = {k: fields[k] for k in ("step", "config", "lineage", "record", "seconds")}
        return StepOutcome(source=source, path=str(output), args=tuple(fields["args"]), **kept)


def _check_deadline(deadline: float | None, step: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise TimeBudgetSpent(step)


def _cache_key(name: str, source: str, config) -> str:
    """Same step, same input bytes, same config: same output."""
    import dataclasses


    text = json.dumps({"step": name, "input": artifact_sha256(source), "config": dataclasses.asdict(config)}, sort_keys=True, default=str)
    return f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _write_json(path: Path, document: dict) -> None:
    write_bytes_atomic(path, json.dumps(document, indent=1, default=str).encode())
