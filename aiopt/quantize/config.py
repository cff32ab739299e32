"""What `aiopt quantize` is asked: the frozen config (one field per flag), its result, and the
validation that refuses a bad option in one line before any work."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from aiopt.errors import InputError
from aiopt.measure.quality import DEFAULT_MAX_ACCURACY_DROP, parse_metric_options
from aiopt.options import option
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
    method: str = option("auto", "--method",
                         "auto (measure every candidate here, write the fastest that keeps quality), or force one: static, dynamic, fp16, bf16.")
    backend: str = option("auto", "--backend",
                          "auto (ONNX Runtime and OpenVINO candidates), or force onnxruntime, openvino, torch, or tensorrt (symmetric INT8 QDQ for TensorRT).")
    calibration: str | None = option(None, "--calibration", "Calibration data: DATA.npz, mnist1d or digits (default: the model's training split).")
    calib_method: str = option("minmax", "--calib-method", "minmax, entropy or percentile.")
    # the command's None: 256 for classifiers, 32 text windows for a causal LM (resolved by the command)
    calib_samples: int = option(256, "--calib-samples",
                                "Calibration samples drawn from the data (default 256; causal LMs: 32 windows of the --calibration text).", cli_default=None)
    per_channel: bool = option(True, "--per-channel/--per-tensor", "Per-channel or per-tensor weight scales.")
    exclude: tuple[str, ...] = option((), "--exclude", "ONNX node name to keep in float (repeatable).", cli_default=None)
    # in accuracy units (0.01 = one point)
    max_accuracy_drop: float | None = option(None, "--max-accuracy-drop",
                                             f"Quality floor for class outputs (auto: default {DEFAULT_MAX_ACCURACY_DROP:g} = half a point; a forced recipe keeps its most harmful layers in float until the drop fits).")
    data: str | None = option(None, "--data", "Evaluation data: .npz, mnist1d or digits (default: the model's test split).")
    latency_batch: int = 64
    seed: int = option(0, "--seed", "Seed for drawing calibration samples.")
    # where calibration and evaluation run (cuda: ORT's CUDA provider, or PyTorch on CUDA)
    device: str = option("cpu", "--device", "cpu or cuda (no GPU: exit 4).")
    # Chosen by measurement (method auto): the quality floor and the batch sizes timed.
    # accuracy | agreement | cosine (the first output), and/or OUTPUT=KIND[@threshold] per output; default: from each output (measure.quality)
    metric: str | tuple[str, ...] | None = option(None, "--metric",
                                                  "accuracy, agreement or cosine for the first output, or OUTPUT=KIND[@threshold] for any output (KIND: class, probability, map, embedding, regression, state, exact; repeatable; default: from what each output is).")
    fixed_inputs: tuple[str, ...] = option((), "--input",
                                           "NAME=VALUE: an input that always takes one value, e.g. --input sr=16000 (recorded in the artifact and fed by its Runner; control flow on it is folded away).", cli_default=None)
    state: tuple[str, ...] = option((), "--state",
                                    "IN=OUT: a recurrent state the model returns and is fed back (quality also measured streaming; default: detected from names and shapes).", cli_default=None)
    min_cosine: float = option(0.99, "--min-cosine", "Quality floor for embeddings and other continuous outputs: mean cosine similarity to FP32.")
    # without -b the command may shrink the largest batch size for a slow model (fit_batch_sizes)
    batch_sizes: tuple[int, ...] = option((1, 64), ("--batch-size", "-b"),
                                          "Batch sizes the candidates are timed at (repeatable; default 1 and 64).", cli_default=None, always=True)
    seq_len: int = option(128, "--seq-len",
                          "Tokens per sample for .txt data (one text per line, tokenized by the model folder's tokenizer), and for sequence axes without data.")
    # restrict the choice to these recipes (registry.MEASURED); empty: all
    candidates: tuple[str, ...] = option((), "--candidate",
                                         "Choose only among these recipes (repeatable; names as in the report, e.g. int8-dynamic).", cli_default=None)
    # one of OBJECTIVES
    objective: str = option("auto", "--objective",
                            "auto: the fastest within the floor that is no larger than the input; latency: the fastest within the floor, whatever its size (e.g. two graphs routed by batch size).")
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
