"""What `aiopt quantize` is asked: the frozen config (one field per flag), its result, and the
validation that refuses a bad option in one line before any work."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from aiopt.errors import InputError
from aiopt.measure.quality import parse_metric_options
from aiopt.quantize.recipes.onnxruntime import CALIB_METHODS
from aiopt.quantize.registry import MEASURED
from aiopt.specs import parse_fixed_inputs

METHODS = ("auto", "static", "dynamic", "fp16", "bf16")
# auto: every candidate this machine can run (ONNX Runtime, OpenVINO), chosen by measurement.
BACKENDS = ("auto", "onnxruntime", "openvino", "torch", "tensorrt")
# auto: the fastest candidate within the quality floor that is no larger than the input (main
# file and companions); latency: the fastest within the floor, whatever its size.
OBJECTIVES = ("auto", "latency")
# File suffix per method, beside the input: MODEL.int8.onnx, MODEL.fp16.onnx, ...
_SUFFIX = {"static": ".int8", "dynamic": ".int8", "fp16": ".fp16", "bf16": ".bf16"}


@dataclass(frozen=True)
class QuantizeConfig:
    method: str = "auto"
    backend: str = "auto"
    calibration: str | None = None  # DATA.npz or a built-in dataset name; default: the model's training split
    calib_method: str = "minmax"
    calib_samples: int = 256
    per_channel: bool = True
    exclude: tuple[str, ...] = ()
    max_accuracy_drop: float | None = None  # in accuracy units (0.01 = one point)
    data: str | None = None  # evaluation data; default: the model's test split
    latency_batch: int = 64
    seed: int = 0
    device: str = "cpu"  # where calibration and evaluation run (cuda: ORT's CUDA provider, or PyTorch on CUDA)
    # Chosen by measurement (method auto): the quality floor and the batch sizes timed.
    # accuracy | agreement | cosine (the first output), and/or OUTPUT=KIND[@threshold] per output; default: from each output (measure.quality)
    metric: str | tuple[str, ...] | None = None
    fixed_inputs: tuple[str, ...] = ()  # NAME=VALUE: inputs that always take one value (a sample rate), fed by the Runner
    state: tuple[str, ...] = ()  # IN=OUT: recurrent state fed back (default: detected from names and shapes)
    min_cosine: float = 0.99
    batch_sizes: tuple[int, ...] = (1, 64)
    seq_len: int = 128  # text data: tokens per sample
    candidates: tuple[str, ...] = ()  # restrict the choice to these recipes (registry.MEASURED); empty: all
    objective: str = "auto"  # OBJECTIVES
    fit_batch_sizes: bool = False  # shrink the largest batch size when one run at it would take seconds (the CLI's default -b)

    @property
    def by_measurement(self) -> bool:
        return self.device == "cpu" and (self.backend == "openvino" or (self.method == "auto" and self.backend == "auto"))


@dataclass
class QuantizeResult:
    path: str
    method: str
    reason: str
    metadata: dict
    report: dict = field(default_factory=dict)


def default_output(source: str | os.PathLike, config: QuantizeConfig, method: str) -> Path:
    source = Path(source)
    suffix = {"tensorrt": ".trt-int8.onnx", "torch": _SUFFIX[method] + ".pt"}.get(config.backend, _SUFFIX[method] + ".onnx")
    return source.with_name(source.name.removesuffix(source.suffix) + suffix)


def validate(config: QuantizeConfig) -> None:
    for flag, value, choices in (("--method", config.method, METHODS), ("--objective", config.objective, OBJECTIVES),
                                 ("--backend", config.backend, BACKENDS), ("--calib-method", config.calib_method, CALIB_METHODS)):
        if value not in choices:
            raise InputError(f"unknown {flag} {value!r}; choose one of {', '.join(choices)}")
    if config.backend == "tensorrt" and config.method not in ("auto", "static"):
        raise InputError("--backend tensorrt writes a static INT8 QDQ model; drop --method or use --method static "
                         "(for FP16 engines: aiopt export --format tensorrt --precision fp16)")
    if config.backend == "onnxruntime" and config.method == "bf16":
        raise InputError("ONNX Runtime's CPU kernels do not run BF16 graphs; use --backend torch --method bf16, or --method fp16")
    if config.backend == "torch" and config.method == "static":
        raise InputError("--backend torch quantizes dynamically (Linear/LSTM weights); for static INT8 use --backend onnxruntime")
    if config.max_accuracy_drop is not None and config.backend == "torch":
        raise InputError("--max-accuracy-drop works with --backend onnxruntime or tensorrt")
    if config.max_accuracy_drop is not None and not 0 <= config.max_accuracy_drop < 1:
        raise InputError(f"--max-accuracy-drop is a fraction of accuracy (0.01 = one point), got {config.max_accuracy_drop}")
    parse_metric_options(config.metric)  # malformed --metric / --input / --state refused before any work
    parse_fixed_inputs(config.fixed_inputs)
    bad_state = next((pair for pair in config.state if "=" not in pair or pair.startswith("=") or pair.endswith("=")), None)
    if bad_state is not None:
        raise InputError(f"--state {bad_state!r} is malformed; write INPUT=OUTPUT, e.g. --state state=stateN")
    unknown = [name for name in config.candidates if name not in MEASURED]
    if unknown:
        raise InputError(f"unknown candidate {unknown[0]!r}; choose from {', '.join(MEASURED)}")
    if config.backend == "openvino" and config.method not in ("auto", "static"):
        raise InputError("--backend openvino writes FP32 or NNCF static INT8; drop --method or use --method static")
    if config.min_cosine is not None and not 0 < config.min_cosine <= 1:
        raise InputError(f"--min-cosine is a cosine similarity in (0, 1], got {config.min_cosine}")
    if not config.batch_sizes or min(config.batch_sizes) < 1:
        raise InputError(f"batch sizes must be at least 1, got {list(config.batch_sizes)}")
    if config.latency_batch < 1:
        raise InputError(f"the latency batch size must be at least 1, got {config.latency_batch}")
