"""One contract for every transform: `run_step(name, source, output, config)`.

A step reads one artifact, takes a frozen config (the dataclass its CLI command fills from
flags) and writes one artifact; it returns a `StepOutcome` with the output's lineage entry, the
record of what the step measured on what it wrote, the `aiopt` command that runs the same
step alone, and the step's full result (its report). The CLI commands export (ONNX), prune,
distill and quantize run their step through here, and `aiopt optimize` composes the same steps:
the reproduce script it writes is the list of their commands, so a chain found by the search is
rebuilt by the commands a user would type, through the same code.

This module sits above compress/ and export/ (it calls them) and below cli.py and optimize/.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiopt.errors import InputError


@dataclass(frozen=True)
class StepHooks:
    """What the caller allows and how it watches: `force` (replace an existing output; optimize
    writes into its own folders), loading options, and progress callbacks."""

    say: Callable[[str], None] = lambda message: None
    # prune: on_epoch(stats); distill: on_epoch(phase, stats); without it, a line per epoch to `say`
    on_epoch: Callable | None = None
    force: bool = True
    trust_pickle: bool = False
    input_spec: list | None = None


@dataclass(frozen=True)
class StepOutcome:
    step: str
    source: str
    path: str
    config: dict  # the frozen config, field by field
    args: tuple[str, ...]  # the command's flags for this config (without source and -o)
    lineage: dict  # the output's own lineage entry
    record: dict  # what the step measured on what it wrote
    seconds: float
    result: Any = field(default=None, compare=False, repr=False)  # the step's own result (report), not serialized

    def command(self, source: str | None = None, output: str | None = None) -> str:
        """The `aiopt` command that runs this step alone (paths may be replaced, e.g. by shell
        variables, which are left unquoted)."""
        return command_line(self.step, source or self.source, output or self.path, self.args)

    def to_dict(self) -> dict:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "result"}
        return {**fields, "args": list(self.args), "command": self.command()}


@dataclass(frozen=True)
class Step:
    name: str
    config_class: type
    run: Callable[[str, str | None, Any, StepHooks], tuple[Any, dict, dict]]  # -> (result, metadata, record)
    flags: dict[str, str]  # config field -> CLI flag
    always: tuple[str, ...] = ()  # fields written even at their dataclass default (the CLI's default differs)


def command_line(step: str, source: str, output: str, args: tuple[str, ...] | list[str]) -> str:
    return " ".join([_quote("aiopt"), step, _quote(source), *map(_quote, args), "-o", _quote(output)])


def _quote(token: str) -> str:
    return token if token.startswith('"$') else shlex.quote(str(token))


def flags_for(step: Step, config: Any) -> tuple[str, ...]:
    """The flags that set `config` on the step's command: every field that differs from its
    default (or that the CLI defaults differently), in the dataclass's order."""
    args: list[str] = []
    for field in dataclasses.fields(config):
        flag = step.flags.get(field.name)
        value = getattr(config, field.name)
        if flag is None or (value == field.default and field.name not in step.always) or value is None:
            continue
        if isinstance(value, bool):
            on, _, off = flag.partition("/")
            args.append(on if value else off)
        elif isinstance(value, (tuple, list)):
            for item in value:
                args += [flag, str(item)]
        else:
            args += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return tuple(args)


# ---------------------------------------------------------------- the steps

def _prune(source: str, output: str, config, hooks: StepHooks) -> tuple[Any, dict, dict]:
    from aiopt.compress.prune import prune_checkpoint

    result = prune_checkpoint(source, output, config, force=hooks.force, on_progress=hooks.say, on_epoch=hooks.on_epoch)
    report = result.report
    accuracy = report["accuracy_after_finetune"] if report.get("accuracy_after_finetune") is not None else result.metadata["metrics"]["accuracy"]
    return result, result.metadata, {"accuracy": accuracy, "split": "test", "accuracy_before": report["accuracy_before"],
                                     "params": report["params_after"], "macs": report["macs_after"], "finetune_seconds": report["finetune_seconds"]}


def _distill(source: str, output: str, config, hooks: StepHooks) -> tuple[Any, dict, dict]:
    from aiopt.compress.distill import distill_checkpoint

    on_epoch = hooks.on_epoch or (lambda phase, stats: hooks.say(f"{phase} epoch {stats.epoch}/{stats.epochs}: loss {stats.loss:.4f}"))
    result = distill_checkpoint(source, output, config, force=hooks.force, on_progress=on_epoch)
    report = result.report
    return result, result.metadata, {"accuracy": report["student_accuracy"], "split": "test", "teacher_accuracy": report["teacher_accuracy"],
                                     "params": report["student_params"], "train_seconds": report["train_seconds"]}


def _export(source: str, output: str, config, hooks: StepHooks) -> tuple[Any, dict, dict]:
    from aiopt.export.onnx import export_onnx

    hooks.say(f"exporting {source} to ONNX (opset {config.opset})...")
    result = export_onnx(source, output, config, force=hooks.force, trust_pickle=hooks.trust_pickle, input_spec=hooks.input_spec)
    return result, result.metadata, {"accuracy": result.accuracy, "split": "test" if result.accuracy is not None else None,
                                     "validation": result.validation}


def _quantize(source: str, output: str | None, config, hooks: StepHooks) -> tuple[Any, dict, dict]:
    from aiopt.quantize.run import quantize_artifact

    result = quantize_artifact(source, output, config, force=hooks.force, trust_pickle=hooks.trust_pickle, input_spec=hooks.input_spec,
                               on_progress=hooks.say)
    report = result.report
    return result, result.metadata, {"runtime": result.metadata.get("runtime", "onnxruntime"), "chosen": report.get("chosen", result.method),
                                     "quality": report.get("quality") or report.get("agreement_with_parent"), "accuracy": report.get("accuracy"),
                                     "verdict": result.reason}


def _registry() -> dict[str, Step]:
    # The config classes are imported here: `import aiopt.steps` stays light.
    from aiopt.compress.distill import DistillConfig
    from aiopt.compress.prune import PruneConfig
    from aiopt.quantize.run import QuantizeConfig
    from aiopt.export.onnx import OnnxExportConfig

    return {
        "prune": Step("prune", PruneConfig, _prune, {
            "method": "--method", "sparsity": "--sparsity", "scope": "--scope", "finetune_epochs": "--finetune-epochs", "steps": "--steps",
            "target_params": "--target-params", "lr": "--lr", "seed": "--seed", "dataset": "--dataset"},
            always=("method", "sparsity", "finetune_epochs")),  # `aiopt prune` fine-tunes 10 epochs unless told
        "distill": Step("distill", DistillConfig, _distill, {
            "student": "--student", "width": "--width", "temperature": "--temperature", "alpha": "--alpha", "feature_weight": "--feature-weight",
            "epochs": "--epochs", "lr": "--lr", "seed": "--seed", "dataset": "--dataset", "compare_alone": "--baseline/--no-baseline"}),
        "export": Step("export", OnnxExportConfig, _export, {
            "opset": "--opset", "dynamic_batch": "--dynamic-batch/--static-batch", "atol": "--atol", "rtol": "--rtol",
            "simplify": "--simplify/--no-simplify", "seq_len": "--seq-len"}),
        "quantize": Step("quantize", QuantizeConfig, _quantize, {
            "method": "--method", "backend": "--backend", "calibration": "--calibration", "calib_method": "--calib-method",
            "calib_samples": "--calib-samples", "per_channel": "--per-channel/--per-tensor", "exclude": "--exclude",
            "max_accuracy_drop": "--max-accuracy-drop", "data": "--data", "seed": "--seed", "device": "--device", "metric": "--metric",
            "min_cosine": "--min-cosine", "batch_sizes": "-b", "seq_len": "--seq-len", "candidates": "--candidate", "objective": "--objective",
            "fixed_inputs": "--input", "state": "--state"},
            always=("batch_sizes",)),  # without -b the CLI may shrink the batch sizes for a slow model
    }




def get_step(name: str) -> Step:
    steps = _registry()
    if name not in steps:
        raise InputError(f"unknown step {name!r}; choose one of {', '.join(steps)}")
    return steps[name]


def run_step(name: str, source: str | os.PathLike, output: str | os.PathLike | None, config: Any,
             say: Callable[[str], None] | None = None, hooks: StepHooks | None = None) -> StepOutcome:
    """Run step `name` on `source` with `config`, writing `output` (None: the step's default name).
    `hooks` (default: replace an existing output, progress lines to `say`) sets what the caller
    allows and how it watches."""
    from aiopt.artifacts import lineage_entry

    step = get_step(name)
    if not isinstance(config, step.config_class):
        raise TypeError(f"step {name} takes a {step.config_class.__name__}, not {type(config).__name__}")
    hooks = hooks or StepHooks(say=say or (lambda message: None))
    start = time.perf_counter()
    result, metadata, record = step.run(str(source), None if output is None else str(output), config, hooks)
    path = str(result.path)
    return StepOutcome(name, str(source), path, dataclasses.asdict(config), flags_for(step, config),
                       lineage_entry(metadata, Path(path)), record, round(time.perf_counter() - start, 3), result)
