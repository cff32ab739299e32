"""One registry for every transform: `run_step(name, source, output, config)`.

A step reads one artifact, takes a frozen config (the dataclass its CLI command fills from
flags) and writes one artifact; it returns a `StepOutcome` with the output's lineage entry, the
record of what the step measured on what it wrote, the `aiopt` command that runs the same
step alone, and the step's typed result (aiopt.steps.results, `to_dict()` is its --json). The
commands export (ONNX, TensorRT, Torch-TensorRT, torch-cuda), prune, distill, quantize and
deploy run their step through here, and `aiopt optimize` composes the same steps: the reproduce
script it writes is the list of their commands, so a chain found by the search is rebuilt by the
commands a user would type, through the same code.

Each option is declared once, on its config field (aiopt.options); the flags a reproduce
command writes and the CLI's typer options are both generated from that declaration.

This package sits above compress/ and export/ (it calls them) and below cli/ and optimize/.
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

from aiopt.artifacts import lineage_entry
from aiopt.compress.distill import DistillConfig
from aiopt.compress.prune import PruneConfig
from aiopt.quantize.config import QuantizeConfig
from aiopt.errors import InputError
from aiopt.export.onnx import OnnxExportConfig
from aiopt.export.tensorrt import TensorRTConfig
from aiopt.export.torch_cuda import TorchCudaConfig
from aiopt.export.triton import TritonConfig
from aiopt.options import Option, declared_options
from aiopt.steps import results, transforms
from aiopt.steps.contract import StepHooks, StepResult

__all__ = ["STEPS", "Step", "StepHooks", "StepOutcome", "StepResult", "command_line", "flags_for", "get_step", "run_step"]


@dataclass(frozen=True)
class Step:
    name: str
    config_class: type
    result_class: type[StepResult]
    run: Callable[[str, str | None, Any, StepHooks], tuple[StepResult, dict, dict]]  # -> (result, metadata, record)
    command: tuple[str, ...] = ()  # the aiopt command and its fixed flags (default: the step's name)
    output_flag: str = "-o"

    @property
    def options(self) -> dict[str, Option]:
        """Config field -> its declared option, in the dataclass's order."""
        return declared_options(self.config_class)

    @property
    def flags(self) -> dict[str, str]:
        """Config field -> the flag a reproduce command writes for it."""
        return {name: declared.written for name, declared in self.options.items()}


STEPS: dict[str, Step] = {step.name: step for step in (
    Step("prune", PruneConfig, results.Pruned, transforms.prune),
    Step("distill", DistillConfig, results.Distilled, transforms.distill),
    Step("export", OnnxExportConfig, results.ExportedOnnx, transforms.export),
    Step("export-tensorrt", TensorRTConfig, results.BuiltTensorRT, transforms.export_tensorrt_step, command=("export", "--format", "tensorrt")),
    Step("export-torch-tensorrt", TensorRTConfig, results.BuiltTensorRT, transforms.export_torch_tensorrt_step,
         command=("export", "--format", "torch-tensorrt")),
    Step("export-torch-cuda", TorchCudaConfig, results.ExportedTorchCuda, transforms.export_torch_cuda_step, command=("export", "--format", "torch-cuda")),
    Step("quantize", QuantizeConfig, results.Quantized, transforms.quantize),
    Step("deploy", TritonConfig, results.Deployed, transforms.deploy, output_flag="--triton"),
)}


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
    result: StepResult | None = field(default=None, compare=False, repr=False)  # the step's typed result, not serialized

    def command(self, source: str | None = None, output: str | None = None) -> str:
        """The `aiopt` command that runs this step alone (paths may be replaced, e.g. by shell
        variables, which are left unquoted)."""
        return command_line(self.step, source or self.source, output or self.path, self.args)

    def to_dict(self) -> dict:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "result"}
        return {**fields, "args": list(self.args), "command": self.command()}


def command_line(step: str, source: str, output: str, args: tuple[str, ...] | list[str]) -> str:
    known = STEPS.get(step)
    command, output_flag = ((known.command or (step,)), known.output_flag) if known else ((step,), "-o")
    return " ".join([_quote("aiopt"), command[0], _quote(source), *command[1:], *map(_quote, args), output_flag, _quote(output)])


def _quote(token: str) -> str:
    return token if token.startswith('"$') else shlex.quote(str(token))


def flags_for(step: Step, config: Any) -> tuple[str, ...]:
    """The flags that set `config` on the step's command: every field that differs from its
    default (or that the command defaults differently), in the dataclass's order."""
    args: list[str] = []
    options = step.options
    for field_ in dataclasses.fields(config):
        declared = options.get(field_.name)
        value = getattr(config, field_.name)
        if declared is None or (value == field_.default and not declared.always) or value is None:
            continue
        flag = declared.written
        if isinstance(value, bool):
            on, _, off = flag.partition("/")
            args.append(on if value else off)
        elif isinstance(value, (tuple, list)):
            for item in value:
                args += [flag, str(item)]
        else:
            args += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return tuple(args)


def get_step(name: str) -> Step:
    if name not in STEPS:
        raise InputError(f"unknown step {name!r}; choose one of {', '.join(STEPS)}")
    return STEPS[name]


def run_step(name: str, source: str | os.PathLike, output: str | os.PathLike | None, config: Any,
             say: Callable[[str], None] | None = None, hooks: StepHooks | None = None) -> StepOutcome:
    """Run step `name` on `source` with `config`, writing `output` (None: the step's default name).
    `hooks` (default: replace an existing output, progress lines to `say`) sets what the caller
    allows and how it watches."""
    step = get_step(name)
    if not isinstance(config, step.config_class):
        raise TypeError(f"step {name} takes a {step.config_class.__name__}, not {type(config).__name__}")
    hooks = hooks or StepHooks(say=say or (lambda message: None))
    start = time.perf_counter()
    result, metadata, record = step.run(str(source), None if output is None else str(output), config, hooks)
    path = str(result.path)
    return StepOutcome(name, str(source), path, dataclasses.asdict(config), flags_for(step, config),
                       lineage_entry(metadata, Path(path)), record, round(time.perf_counter() - start, 3), result)
