"""`aiopt quantize`: INT8 (static with calibration, or dynamic) and FP16 through ONNX Runtime,
measured on the quantized artifact itself against the FP32 model it came from.

Flow: FP32 ONNX (exported and validated if the input is a PyTorch artifact) -> ORT
pre-processing -> quantization -> accuracy, agreement and a quick latency ratio on ONNX
Runtime -> metadata embedded -> one atomic write. Nothing is written if a check fails.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from aiopt.quantize.recipes import onnxruntime as onnx_quant
from aiopt.errors import InputError

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
    candidates: tuple[str, ...] = ()  # restrict the choice to these recipes (candidates.BUILDERS); empty: all
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


def _validate(config: QuantizeConfig) -> None:
    if config.method not in METHODS:
        raise InputError(f"unknown --method {config.method!r}; choose one of {', '.join(METHODS)}")
    if config.objective not in OBJECTIVES:
        raise InputError(f"unknown --objective {config.objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if config.backend not in BACKENDS:
        raise InputError(f"unknown --backend {config.backend!r}; choose one of {', '.join(BACKENDS)}")
    if config.calib_method not in onnx_quant.CALIB_METHODS:
        raise InputError(f"unknown --calib-method {config.calib_method!r}; choose one of {', '.join(onnx_quant.CALIB_METHODS)}")
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
    from aiopt.quantize.candidates import BUILDERS
    from aiopt.measure.quality import parse_metric_options
    from aiopt.specs import parse_fixed_inputs

    parse_metric_options(config.metric)  # malformed --metric / --input / --state refused before any work
    parse_fixed_inputs(config.fixed_inputs)
    bad_state = next((pair for pair in config.state if "=" not in pair or pair.startswith("=") or pair.endswith("=")), None)
    if bad_state is not None:
        raise InputError(f"--state {bad_state!r} is malformed; write INPUT=OUTPUT, e.g. --state state=stateN")
    unknown = [name for name in config.candidates if name not in BUILDERS]
    if unknown:
        raise InputError(f"unknown candidate {unknown[0]!r}; choose from {', '.join(BUILDERS)}")
    if config.backend == "openvino" and config.method not in ("auto", "static"):
        raise InputError("--backend openvino writes FP32 or NNCF static INT8; drop --method or use --method static")
    if config.min_cosine is not None and not 0 < config.min_cosine <= 1:
        raise InputError(f"--min-cosine is a cosine similarity in (0, 1], got {config.min_cosine}")
    if not config.batch_sizes or min(config.batch_sizes) < 1:
        raise InputError(f"batch sizes must be at least 1, got {list(config.batch_sizes)}")
    if config.latency_batch < 1:
        raise InputError(f"the latency batch size must be at least 1, got {config.latency_batch}")


def quantize_artifact(
    source: str | os.PathLike,
    output: str | os.PathLike | None = None,
    config: QuantizeConfig = QuantizeConfig(),
    force: bool = False,
    trust_pickle: bool = False,
    input_spec=None,
    on_progress: Callable[[str], None] | None = None,
) -> QuantizeResult:
    from aiopt.artifacts import load_model, require_input_spec
    from aiopt.quantize.calibration import calibration_set
    from aiopt.fileio import check_output_path

    _validate(config)
    if config.backend == "auto" and not config.by_measurement:  # a forced --method keeps today's ONNX Runtime recipe
        config = replace(config, backend="onnxruntime")
    _check_device(config)
    say = on_progress or (lambda message: None)
    if config.by_measurement:
        from aiopt.quantize.measured import quantize_by_measurement

        return quantize_by_measurement(source, output, config, force, trust_pickle, input_spec, say)
    loaded = load_model(source, trust_pickle=trust_pickle, input_spec=input_spec)
    from aiopt.specs import parse_fixed_inputs, with_fixed_values

    loaded.input_spec = with_fixed_values(loaded.input_spec, parse_fixed_inputs(config.fixed_inputs))
    spec = require_input_spec(loaded)
    calibration = None
    if config.method in ("auto", "static") and config.backend != "torch":
        calibration = calibration_set(config.calibration, spec, loaded.metadata, config.calib_samples, config.seed, config.seq_len)
    method, reason = _choose_method(config, calibration is not None)
    out = check_output_path(output or default_output(source, config, method), source, config.calibration, config.data, force=force)
    say(f"method: {method} ({reason})")
    if config.backend == "torch":
        return _quantize_torch(loaded, spec, config, method, reason, out)
    with tempfile.TemporaryDirectory(prefix="aiopt-quantize-") as work:
        work = Path(work)
        prepared, preprocessing, source_export = prepare_fp32(loaded, source, work, trust_pickle, input_spec, say)
        if config.fit_batch_sizes and config.device == "cpu":
            data = evaluation_data(spec, loaded.metadata, config.data, calibration, lambda message: None, config.seq_len)
            config = fit_batch_sizes(prepared, spec, data, config, say)
        job = _QuantizeJob(config, method, spec, loaded, prepared, work, calibration, say)
        report = job.run()
        report.update({"method": method, "reason": reason, "preprocessing": preprocessing, "source_export": source_export})
        out = _honest_default(job.result_path, out, output, source, config, report, say, force)
        _write(job.result_path, out, loaded, spec, report)
    return QuantizeResult(str(out), method, reason, report.pop("_metadata"), report)


def fit_batch_sizes(prepared: Path, spec, data, config: QuantizeConfig, say) -> QuantizeConfig:
    """The default batch sizes (and the forced recipe's quick latency batch) shrunk when one
    FP32 run at the largest would take seconds (measure.latency.affordable_batch_sizes), said up
    front. Sizes the user passed (-b) are kept."""
    from aiopt.errors import AioptError
    from aiopt.measure.deployed import batch_feed
    from aiopt.measure.latency import affordable_batch_sizes
    from aiopt.runtime.onnxruntime_backend import OnnxRuntimeRunner

    if not config.fit_batch_sizes:
        return config
    try:
        runner = OnnxRuntimeRunner(str(prepared), spec)
        asked = config.batch_sizes if config.by_measurement else (1, config.latency_batch)
        sizes, note = affordable_batch_sizes(lambda batch: runner(batch_feed(data, spec, batch)), asked)
    except AioptError:  # the model's own error comes, whole, from the step that needs it
        return config
    if note is None:
        return config
    say(f"note: {note}")
    return replace(config, batch_sizes=sizes, latency_batch=max(sizes)) if config.by_measurement else replace(config, latency_batch=max(sizes))


def _honest_default(written: Path, out: Path, output, source, config: QuantizeConfig, report: dict, say, force: bool) -> Path:
    """The default name says what the written graph holds: a forced INT8 recipe that quantized
    nothing (ONNX Runtime's dynamic INT8 leaves Conv layers alone) is written as `.fp32`."""
    from aiopt.quantize.precision import graph_precision
    from aiopt.fileio import check_output_path

    stored = graph_precision(written)
    report["stored_precision"] = stored
    expected = "int8" if report["method"] in ("static", "dynamic") else report["method"]
    if stored == expected:
        return out
    say(f"the {report['method']} recipe left this graph in {stored.upper()} (no op it quantizes or converts here): named for what it holds")
    if output is not None or config.backend == "tensorrt":
        return out
    source = Path(source)
    return check_output_path(source.with_name(source.name.removesuffix(source.suffix) + f".{stored}.onnx"), source, config.calibration,
                             config.data, force=force)


def _check_device(config: QuantizeConfig) -> None:
    """--device cuda needs CUDA where the work runs: PyTorch for --backend torch, ONNX Runtime's
    CUDA provider otherwise (exit 4 before anything is loaded)."""
    if config.device == "cpu":
        return
    if config.backend == "torch":
        from aiopt.runtime.torch_backend import torch_device

        torch_device(config.device)
    else:
        from aiopt.runtime.onnxruntime_backend import providers_for

        providers_for(config.device)


def _choose_method(config: QuantizeConfig, have_calibration: bool) -> tuple[str, str]:
    """The forced ONNX Runtime recipe: static when calibration data exists, else dynamic."""
    if config.backend == "torch" and config.method == "auto":
        return "dynamic", "PyTorch backend: dynamic INT8 of Linear and LSTM weights"
    if config.method == "static" and not have_calibration:
        raise InputError("static quantization needs calibration data: the model records no built-in dataset; pass --calibration DATA.npz")
    if config.method == "auto":
        if have_calibration and config.calibration is not None:
            return "static", f"calibration data given ({config.calibration}): static INT8 calibrated on it"
        if have_calibration:
            return "static", "the model's training data is known: static INT8 calibrated on it"
        return "dynamic", "no calibration data (the model records no dataset; pass --calibration DATA.npz for static INT8): dynamic INT8"
    return config.method, "requested"


def prepare_fp32(loaded, source, work: Path, trust_pickle: bool, input_spec, say) -> tuple[Path, str, dict | None]:
    """The FP32 ONNX every recipe starts from, in `work`: the input itself when it is ONNX (after
    checking ONNX Runtime loads it), else its validated export; then ORT's pre-processing.
    Returns (pre-processed graph, the pre-processing path taken, the export record or None)."""
    from aiopt.artifacts import FORMAT_ONNX

    fp32 = work / "fp32.onnx"
    source_export = None
    if loaded.format == FORMAT_ONNX:
        from aiopt.runtime.onnxruntime_backend import make_session

        make_session(str(loaded.path))  # an op ORT lacks fails here, in one line, not inside its pre-processing
        shutil.copyfile(loaded.path, fp32)
    else:
        say("exporting to ONNX (validated against PyTorch)")
        source_export = _export_fp32(source, fp32, trust_pickle, input_spec)
    prepared = work / "prepared.onnx"
    fp32 = _specialised(fp32, loaded.input_spec, say)
    return prepared, onnx_quant.preprocess(fp32, prepared), source_export


def _taken_by(spec, graph: Path) -> list:
    """The inputs `graph` takes: a fixed input folded away by specialisation is not fed to it."""
    import onnx

    taken = {i.name for i in onnx.load(str(graph), load_external_data=False).graph.input}
    return [s for s in spec if s.value is None or s.name in taken]


def _specialised(fp32: Path, spec, say) -> Path:
    """With fixed inputs (--input sr=16000), the graph specialised for them (If/Loop on them folded
    away) before ORT's pre-processing, which cannot follow control flow."""
    from aiopt.export.onnx import specialise_fixed_inputs

    fixed = {s.name: s.value for s in spec if s.value is not None}
    if not fixed:
        return fp32
    target = fp32.with_name("fp32-specialised.onnx")
    record = specialise_fixed_inputs(fp32, target, fixed)
    if record is None:
        return fp32
    folded = [n for n in record["control_flow_before"] if n not in record["control_flow_left"]]
    say(f"specialised for {', '.join(f'{k}={v}' for k, v in record['inputs'].items())}"
        + (f": {', '.join(folded)} folded to the branch taken" if folded else ""))
    return target


def _export_fp32(source, target: Path, trust_pickle: bool, input_spec) -> dict:
    from aiopt.export.onnx import OnnxExportConfig, export_onnx

    result = export_onnx(source, target, OnnxExportConfig(), force=True, trust_pickle=trust_pickle, input_spec=input_spec)
    return {"exporter": result.exporter, "opset": result.opset, "validation": result.validation}


class _QuantizeJob:
    """One quantization run: build the quantized graph, measure it against FP32, and (with a
    budget) keep the most harmful layers in float until the accuracy drop fits."""

    def __init__(self, config: QuantizeConfig, method: str, spec, loaded, prepared: Path, work: Path, calibration, say):
        from aiopt.hardware import detect_cpu, int8_kernel_for

        self.config, self.method, self.spec, self.loaded = config, method, _taken_by(spec, prepared), loaded
        self.prepared, self.work, self.calibration, self.say = prepared, work, calibration, say
        self.cpu = detect_cpu()
        self.kernel = int8_kernel_for(self.cpu)
        self.nodes = onnx_quant.graph_nodes(prepared)
        self.recurrent = [name for name, op in self.nodes if op in onnx_quant.RECURRENT_OPS]
        self._trial = 0

    def _providers(self) -> tuple[str, ...]:
        from aiopt.runtime.onnxruntime_backend import providers_for

        return () if self.config.device == "cpu" else tuple(providers_for(self.config.device))

    @property
    def for_tensorrt(self) -> bool:
        return self.config.backend == "tensorrt"

    def run(self) -> dict:
        from aiopt.runtime.onnxruntime_backend import OnnxRuntimeRunner

        data = evaluation_data(self.spec, self.loaded.metadata, self.config.data, self.calibration, self.say, self.config.seq_len)
        reference_runner = OnnxRuntimeRunner(str(self.prepared), self.spec, self.config.device)
        kept: list[str] = []
        self.result_path = self._quantize(tuple(self.config.exclude))
        selection = None
        if self.config.max_accuracy_drop is not None:
            selection = self._select_layers()
            kept = selection["kept_float"]
            self.result_path = self._quantize(tuple(self.config.exclude) + tuple(kept))
        runner = OnnxRuntimeRunner(str(self.result_path), self.spec, self.config.device)
        return {
            "backend": self.config.backend,
            **measure_against_parent(reference_runner, runner, data, self.spec, self.config.latency_batch, f"the {self.method} model",
                                     self.loaded.metadata),
            "fp32_size_bytes": self.prepared.stat().st_size,
            "size_bytes": self.result_path.stat().st_size,
            "excluded": list(self.config.exclude),
            "kept_float": kept,
            "layer_selection": selection,
            **self._settings(),
        }

    def _settings(self) -> dict:
        settings = {"per_channel": self.config.per_channel, "recurrent_nodes": self.recurrent}
        if self.method == "static":
            settings.update(calibration={"source": self.calibration.source, "samples": len(self.calibration), "method": self.config.calib_method})
        if self.method in ("static", "dynamic") and not self.for_tensorrt:
            settings.update(cpu={"model": self.cpu.model, "machine": self.cpu.machine, "vnni": self.cpu.has_vnni}, int8_kernel=self.kernel.to_dict())
        if self.for_tensorrt:
            settings.update(target="tensorrt-explicit-quantization", activations="int8 symmetric", weights="int8 symmetric per-channel")
        return settings

    # ------------------------------------------------------------ building
    def _quantize(self, exclude: tuple[str, ...]) -> Path:
        self._trial += 1
        target = self.work / f"candidate-{self._trial}.onnx"
        if self.method == "fp16":
            onnx_quant.convert_float16(self.prepared, target, exclude)
        elif self.method == "dynamic":
            onnx_quant.quantize_dynamic_int8(self.prepared, target, self.config.per_channel, self.kernel.reduce_range, exclude=exclude)
        else:
            self._static(target, exclude)
        return target

    def _static(self, target: Path, exclude: tuple[str, ...]) -> None:
        from aiopt.quantize.candidates import static_int8

        if self.for_tensorrt:  # TensorRT's explicit quantization: symmetric INT8 everywhere
            options = onnx_quant.StaticInt8Options(
                per_channel=self.config.per_channel, activation_type="int8", weight_type="int8", symmetric_activations=True,
                calib_method=self.config.calib_method, exclude=exclude, extra={"QuantizeBias": False},
                calibration_providers=self._providers(),
            )
        else:
            options = onnx_quant.StaticInt8Options(
                per_channel=self.config.per_channel, reduce_range=self.kernel.reduce_range,
                activation_type=self.kernel.activation_type, weight_type=self.kernel.weight_type,
                calib_method=self.config.calib_method, exclude=exclude, calibration_providers=self._providers(),
            )
        # TensorRT takes QDQ around every op, recurrent cells included
        static_int8(self.prepared, target, self.calibration, self.spec, options, self.recurrent, self.work / "calibration-cache.json",
                    recurrent_dynamic=not self.for_tensorrt)

    # ------------------------------------------------------------ layer selection
    def _candidate_layers(self) -> list[str]:
        if self.method == "fp16":
            ops = {op for _, op in self.nodes} - set(onnx_quant.FLOAT32_SENSITIVE_OPS)
        elif self.method == "dynamic":
            ops = set(onnx_quant.DYNAMIC_OPS)
        else:
            ops = set(onnx_quant.COMPUTE_OPS + onnx_quant.RECURRENT_OPS)
        return [name for name, op in self.nodes if op in ops and name not in self.config.exclude]

    def _select_layers(self) -> dict:
        """Greedy sensitivity search on held-out training samples (never the test split):
        score each layer by the accuracy regained when it alone stays in float, then keep the
        worst offenders in float, one at a time, until the drop fits the budget."""
        from aiopt.evaluate import accuracy, run_batches
        from aiopt.runtime.onnxruntime_backend import OnnxRuntimeRunner

        selection = self.calibration.selection if self.calibration is not None else None
        if selection is None:
            raise InputError("--max-accuracy-drop needs labelled held-out data: use a built-in dataset for --calibration, or drop the option")
        budget = self.config.max_accuracy_drop

        def score(path: Path) -> float:
            return accuracy(run_batches(OnnxRuntimeRunner(str(path), self.spec, self.config.device), selection)[0], selection.labels)

        fp32 = score(self.prepared)
        base_drop = fp32 - score(self.result_path)
        log = {"data": selection.source, "samples": len(selection), "fp32_accuracy": fp32, "budget": budget, "drop_all_quantized": base_drop}
        if base_drop <= budget:
            self.say(f"accuracy drop {base_drop * 100:.2f} pt fits the budget of {budget * 100:.2f} pt: every layer quantized")
            return {**log, "kept_float": [], "steps": []}
        layers = self._candidate_layers()
        self.say(f"accuracy drop {base_drop * 100:.2f} pt exceeds {budget * 100:.2f} pt: measuring {len(layers)} layers")
        gains = {}
        for layer in layers:
            gains[layer] = score(self._quantize(tuple(self.config.exclude) + (layer,))) - (fp32 - base_drop)
        ranked = sorted(layers, key=lambda name: -gains[name])
        kept, steps, drop = [], [], base_drop
        for layer in ranked:
            kept.append(layer)
            drop = fp32 - score(self._quantize(tuple(self.config.exclude) + tuple(kept)))
            steps.append({"kept_float": layer, "drop": drop})
            if drop <= budget:
                break
        fits = drop <= budget
        self.say(f"kept in float: {', '.join(kept)}; drop {drop * 100:.2f} pt" + ("" if fits else " (still over budget: every layer tried)"))
        return {**log, "layer_gains": gains, "kept_float": kept, "steps": steps, "fits_budget": fits}

def evaluation_data(spec, metadata: dict, data: str | None, calibration=None, say=lambda message: None, seq_len: int = 128):
    """The model's test split (or --data); without either, calibration or random inputs, which
    measure agreement with the parent but no accuracy."""
    from aiopt.artifacts import example_inputs
    from aiopt.evaluate import EvalData, eval_data

    try:
        found = eval_data(spec, metadata, data, seq_len=seq_len)
        for note in found.notes:
            say(note)
        return found
    except InputError:
        if data is not None:
            raise
    say("no evaluation data (pass --data FILE.npz): comparing with the parent on sample inputs, no accuracy")
    if calibration is not None:
        return EvalData(calibration.inputs, None, "calibration inputs")
    from aiopt.specs import fed_by_data, to_sample_first

    fed = fed_by_data(spec)  # held sample-first, as data files are; fixed inputs come from the spec
    return EvalData({s.name: to_sample_first(t.numpy(), s) for s, t in zip(fed, example_inputs(fed, 64))}, None, "random inputs")


def measure_against_parent(reference_runner, runner, data, spec, latency_batch: int, what: str, metadata: dict | None = None) -> dict:
    """Accuracy of both, agreement of the candidate with the reference (NaN and collapse refused,
    judged by what the output is: top-1 for class scores, cosine for embeddings), and a quick
    same-run latency ratio."""
    from aiopt.evaluate import accuracy, run_batches
    from aiopt.measure.quality import QualityFloor, check_against_parent, compare_all, judge_outputs, metric_for, output_kind
    from aiopt.specs import TensorSpec

    references, candidates = run_batches(reference_runner, data), run_batches(runner, data)
    reference, candidate = references[0], candidates[0]
    kind, _ = output_kind(metadata, runner.output_names[0], reference.shape)
    # every output judged by what it is, beside the first output's collapse guard
    judges = judge_outputs(metadata, [TensorSpec(n, ()) for n in runner.output_names], references, data.labels is not None)
    floor = QualityFloor(metric_for(judges[0], data.labels is not None), judges=judges)
    judged = compare_all(references, candidates, judges, data.labels)
    for judge in judges:
        judged["outputs"][judge.name]["verdict"] = floor.output_problem(judge, judged["outputs"][judge.name]) or "ok"
    report = {
        "agreement_with_parent": {**check_against_parent(reference, candidate, what, "agreement" if kind == "classification" else "cosine"),
                                  "outputs": judged["outputs"]},
        "fp32_accuracy": accuracy(reference, data.labels) if data.labels is not None else None,
        "accuracy": accuracy(candidate, data.labels) if data.labels is not None else None,
        "eval_data": data.source,
        "samples": len(data),
        "latency": _latency_ratio(reference_runner, runner, data, spec, latency_batch),
    }
    if report["accuracy"] is not None:
        report["accuracy_drop"] = round(report["fp32_accuracy"] - report["accuracy"], 6)
    return report


def _latency_ratio(reference_runner, runner, data, spec, batch: int) -> dict:
    from aiopt.measure.latency import LatencyConfig, measure_latency

    from aiopt.measure.deployed import batch_feed

    feed = batch_feed(data, spec, batch)
    batch = len(next(iter(feed.values())))
    quick = LatencyConfig(warmup=5, min_runs=10, min_time=0.5)
    fp32 = measure_latency(lambda: reference_runner(feed), quick)
    quantized = measure_latency(lambda: runner(feed), quick)
    return {"batch_size": batch, "fp32_p50_ms": fp32.p50, "p50_ms": quantized.p50, "speedup": round(fp32.p50 / quantized.p50, 3),
            "note": f"quick check on {runner.backend} CPU; use aiopt bench for figures"}


def _quantize_torch(loaded, spec, config: QuantizeConfig, method: str, reason: str, out: Path) -> QuantizeResult:
    import io

    import torch

    from aiopt.artifacts import child_metadata, example_inputs, output_spec, with_own_lineage
    from aiopt.quantize.recipes import torch as torch_quant
    from aiopt.fileio import atomic_path
    from aiopt.runtime.torch_backend import TorchRunner

    if not loaded.is_torch:
        raise InputError(f"--backend torch needs a PyTorch artifact; {loaded.path} is ONNX (use --backend onnxruntime)")
    outputs = output_spec(loaded)
    names = [o.name for o in outputs]
    scripted = torch_quant.to_torchscript(torch_quant.reduce_precision(loaded.model, method), example_inputs(spec, 2))
    data = evaluation_data(spec, loaded.metadata, config.data, seq_len=config.seq_len)
    report = {
        "backend": "torch",
        **measure_against_parent(TorchRunner(loaded.model, spec, names, config.device), TorchRunner(scripted, spec, names, config.device), data, spec,
                                 config.latency_batch, f"the {method} model", loaded.metadata),
        "fp32_size_bytes": Path(loaded.path).stat().st_size,
        "method": method, "reason": reason, "per_channel": False,
        "layers": "Linear, LSTM" if method == "dynamic" else "all (LayerNorm in float32)",
        "torch_version": torch.__version__,
    }
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    report["size_bytes"] = buffer.getbuffer().nbytes
    metadata = child_metadata(
        loaded, "quantize", format="torchscript",
        inputs=[s.to_dict() for s in spec], outputs=[o.to_dict() for o in outputs],
        quantization={k: v for k, v in report.items() if k != "latency"},
        metrics={"accuracy": report["accuracy"], "split": "test", "measured_on": "torch"} if report["accuracy"] is not None else loaded.metadata.get("metrics"),
        agreement_with_parent=report["agreement_with_parent"],
    )
    with atomic_path(out) as tmp:
        torch_quant.save_torchscript(scripted, with_own_lineage(metadata, out), tmp)
    return QuantizeResult(str(out), method, reason, metadata, report)


def _write(result: Path, out: Path, loaded, spec, report: dict) -> None:
    import onnx

    from aiopt.artifacts import child_metadata, onnx_value_specs, with_own_lineage
    from aiopt.export.onnx import check_onnx, embed_metadata
    from aiopt.fileio import atomic_path

    model = check_onnx(result)
    accuracy = report.get("accuracy")
    metadata = child_metadata(
        loaded, "quantize",
        format="onnx",
        inputs=[s.to_dict() for s in spec],
        outputs=[o.to_dict() for o in onnx_value_specs(model.graph.output)],
        quantization={k: v for k, v in report.items() if k not in ("latency",)},
        metrics={"accuracy": accuracy, "split": "test", "measured_on": "onnxruntime"} if accuracy is not None else loaded.metadata.get("metrics"),
        agreement_with_parent=report["agreement_with_parent"],
    )
    embed_metadata(model, with_own_lineage(metadata, out))
    with atomic_path(out) as tmp:
        onnx.save_model(model, str(tmp))
    report["_metadata"] = metadata

