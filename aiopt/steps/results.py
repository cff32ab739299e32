"""The typed result of each step (aiopt.steps.contract.StepResult): the fields the CLI and
`aiopt optimize` read, by name, instead of string keys into a report."""
from __future__ import annotations

from dataclasses import dataclass

from aiopt.steps.contract import StepResult, key


@dataclass(frozen=True)
class Pruned(StepResult):
    method: str | None = None
    params_before: int | None = None
    params_after: int | None = None
    macs_before: int | None = None
    macs_after: int | None = None
    accuracy_before: float | None = None
    accuracy_after_prune: float | None = None
    accuracy_after_finetune: float | None = None  # None: not fine-tuned
    finetune_seconds: float | None = None


@dataclass(frozen=True)
class Distilled(StepResult):
    teacher_params: int | None = None
    teacher_accuracy: float | None = None
    student_params: int | None = None
    student_accuracy: float | None = None
    student_alone_accuracy: float | None = None  # None: --no-baseline
    train_seconds: float | None = None


@dataclass(frozen=True)
class ExportedOnnx(StepResult):
    exporter: str | None = None
    opset: int | None = None
    nodes_exported: int | None = None
    nodes_simplified: int | None = None
    validation: list | None = None  # one check per stage: batch sizes, max abs/rel diff, top-1 agreement
    accuracy: float | None = None  # on the test split, on ONNX Runtime


@dataclass(frozen=True)
class BuiltTensorRT(StepResult):
    """A TensorRT engine or a Torch-TensorRT ExportedProgram, with its sidecar."""

    sidecar: str | None = None
    tensorrt_version: str | None = None
    gpu: dict | None = None
    precision: str | None = None


@dataclass(frozen=True)
class ExportedTorchCuda(StepResult):
    precision: str | None = None
    batch_sizes: list | None = None
    exported_on: str | None = None
    accuracy: float | None = None
    parent_accuracy: float | None = None


@dataclass(frozen=True)
class Quantized(StepResult):
    method: str | None = None  # auto, or the forced recipe
    reason: str | None = None
    chosen: str | None = None
    accuracy: float | None = None
    fp32_accuracy: float | None = None
    accuracy_drop: float | None = None
    eval_data: str | None = None
    size_bytes: int | None = None
    fp32_size_bytes: int | None = None
    latency: dict | None = None
    agreement_with_parent: dict | None = None
    quality: dict | None = None
    kept_float: list | None = None
    stored_precision: str | None = None
    compute_precision: str | None = None
    metric: str | None = None
    selection: dict | None = None  # auto: every candidate measured


@dataclass(frozen=True)
class Deployed(StepResult):
    path: str = key("repository")  # what `aiopt deploy --triton` names: the repository folder
    file: str | None = None  # the model file written into it
    model: str | None = None
    platform: str | None = None
    config: str | None = None
    max_batch_size: int | None = None
    notes: list | None = None
