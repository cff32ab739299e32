"""`aiopt bench`: measure artifacts side by side, one record per artifact x backend x device x batch.

Every record is taken the same way: `aiopt.runtime.load` -> Runner, predictions on the
evaluation data (accuracy, and agreement with the baseline's predictions), warm-up per batch
size (peak memory); then all records' latencies are timed together in interleaved rounds
(`measure_interleaved`). The baseline (FP32 PyTorch, found through the lineage when
not given) is measured in the same run, so `speedup_vs_baseline` is a same-run ratio.
A backend or device that is absent gives a record with `skipped` set, and the rest still runs.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from aiopt import runtime
from aiopt.machine import available_cores, describe_machine
from aiopt.bench.memory import PeakMemory
from aiopt.evaluate import accuracy, eval_data, run_batches
from aiopt.export.tensorrt import sidecar_path
from aiopt.measure.latency import LatencyConfig, affordable_batch_sizes, measure_interleaved_steady
from aiopt.artifacts import FORMAT_AIOPT, artifact_size, count_parameters, example_inputs, load_model, now_iso, output_spec, require_input_spec
from aiopt.errors import AioptError, InputError, MissingDependencyError
from aiopt.measure.quality import compare_outputs, output_kind
from aiopt.measure.torch_model import count_macs_and_params
from aiopt.options import SEQ_LEN_HELP, option
from aiopt.reference_models import build_model
from aiopt.runtime import ENGINE_SUFFIXES
from aiopt.runtime.cuda_graph import PEER_BACKEND, WARMUP_CALLS, require_cuda
from aiopt.runtime.torch_backend import TorchRunner, torch_device
from aiopt.specs import fixed_batch, to_model_layout

SCHEMA_VERSION = 1
BENCH_BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt")


@dataclass(frozen=True)
class BenchConfig:
    # empty: each artifact's own backend
    backends: tuple[str, ...] = option((), "--backend", "torch, onnxruntime, openvino or tensorrt (repeatable; default: each artifact's own); "
                                       "causal LMs also openvino-stateful and onnxruntime-genai.", cli_default=None)
    devices: tuple[str, ...] = option(("cpu",), "--device", "cpu or cuda (repeatable; default cpu).", cli_default=None)
    # without -b the command may shrink the largest batch size for a slow model (fit_batch_sizes); causal LMs: GenerativeBenchConfig's
    batch_sizes: tuple[int, ...] = option((1, 64), ("--batch-size", "-b"), "Batch size (repeatable; default 1 and 64; causal LMs 1 and 8).",
                                          cli_default=None)
    latency: LatencyConfig = LatencyConfig()  # its fields carry their own flags (--warmup, --min-runs, --min-time, --rounds)
    threads: int | None = option(None, "--threads", "Threads for PyTorch and ONNX Runtime (default: all cores).")
    data: str | None = option(None, "--data", "Evaluation data: .npz, .txt (one text per line), mnist1d or digits (default: each model's test split).")
    # add the FP32 PyTorch model the lineage names
    baseline: bool = option(True, " /--no-baseline", "Do not add the FP32 PyTorch model named in the lineage.")
    input_spec: tuple = ()  # TensorSpecs for artifacts without metadata (--input-shape)
    seq_len: int = option(128, "--seq-len", SEQ_LEN_HELP)  # token length of .txt data, and of sequence axes without data
    fit_batch_sizes: bool = False  # shrink the largest batch size when one run would take seconds (the CLI's default -b)


@dataclass
class _Target:
    path: str
    backend: str | None
    device: str
    is_baseline: bool = False
    label: str = ""
    baseline: str | None = None  # the baseline artifact this target is compared with
    is_peer: bool = False  # the baseline under torch.compile(mode="reduce-overhead") in FP16 (CUDA only)
    parent: str | None = None  # the nearest ancestor (lineage) that this run measures too


@dataclass
class _Measured:
    records: list[dict] = field(default_factory=list)
    baseline_logits: dict = field(default_factory=dict)  # baseline path -> logits on the evaluation data
    baseline_p50: dict = field(default_factory=dict)  # (baseline path, device, batch) -> p50 ms
    peer_p50: dict = field(default_factory=dict)  # (baseline path, device, batch) -> the peer's p50 ms


def validate(config: BenchConfig) -> None:
    for backend in config.backends:
        if backend not in BENCH_BACKENDS:
            raise InputError(f"unknown --backend {backend!r}; choose from {', '.join(BENCH_BACKENDS)}")
    for device in config.devices:
        if device.split(":")[0] not in ("cpu", "cuda"):
            raise InputError(f"unknown --device {device!r}; use cpu or cuda")
    if not config.batch_sizes or min(config.batch_sizes) < 1:
        raise InputError(f"--batch-size values must be at least 1, got {list(config.batch_sizes)}")
    if config.threads is not None and config.threads < 1:
        raise InputError(f"--threads must be at least 1, got {config.threads}")
    if config.latency.min_runs < 1 or config.latency.min_time < 0 or config.latency.warmup < 0 or config.latency.rounds < 1:
        raise InputError("--min-runs and --rounds must be at least 1, and --min-time and --warmup not negative")


def run_bench(artifacts: list[str], config: BenchConfig = BenchConfig(), command: str = "", on_record=None, on_progress=None,
              say=lambda message: None) -> dict:
    """Benchmark `artifacts`; returns the report document (schema in README, "Benchmark reports").

    `on_record(record)` is called with each finished record; `on_progress(phase, done, total, what)`
    before each step of the long work: phase "prepare" per target (load, evaluate, warm up), then
    "time" per interleaved timing slice, and once more with done == total at the end of each phase.
    """
    validate(config)
    for path in artifacts:
        if not Path(path).is_file() and not (Path(path) / "config.json").is_file():
            raise InputError(f"{path} does not exist or is not a file (or a Hugging Face model folder); pass the artifacts to benchmark")
    threads = config.threads or available_cores()
    _set_threads(threads)
    measured = _Measured()
    # Load, evaluate and warm every target first, then time them all in interleaved rounds,
    # so drift on a shared machine hits every record alike and each ratio is a fair one.
    step = on_progress or (lambda phase, done, total, what: None)
    targets = _targets(artifacts, config)
    batch_note = None
    if config.fit_batch_sizes:
        config, batch_note = _fit_batch_sizes(targets[0], config, threads)
        if batch_note:
            say(f"note: {batch_note}")
    entries: list = []
    for index, target in enumerate(targets):
        step("prepare", index, len(targets), f"{target.label} [{target.backend or 'auto'}/{target.device}]")
        entries += _prepare_target(target, config, threads, measured)
    step("prepare", len(targets), len(targets), "")
    pending = [e for e in entries if isinstance(e, _Pending)]
    rounds = max(1, config.latency.rounds)

    def timing(round_index: int, index: int) -> None:
        record = pending[index].record
        step("time", round_index * len(pending) + index, rounds * len(pending),
             f"round {round_index + 1}/{rounds}: {record['label']} [{record['backend']}/{record['device']}] batch {record['batch_size']}")

    # a figure that says the machine was busy is taken again, all of them together (same-run ratios)
    timed, remeasured = measure_interleaved_steady([(e.run, e.cuda) for e in pending], config.latency, on_slice=timing)
    step("time", rounds * len(pending), rounds * len(pending), "")
    own_p50 = {}  # (artifact, device, batch) -> [(backend, p50)], for the speedup against a parent in the run
    for entry, stats in zip(pending, timed):
        entry.record["latency_ms"] = stats.to_dict()
        entry.record["unsteady"] = stats.unsteady
        entry.record["remeasured"] = remeasured
        entry.record["throughput"] = round(entry.record["batch_size"] * 1e3 / stats.mean, 2)
        if entry.target.is_baseline:
            measured.baseline_p50[entry.key] = stats.p50
        if entry.target.is_peer:
            measured.peer_p50[entry.key] = stats.p50
        if not entry.target.is_peer:
            own_p50.setdefault((entry.target.path, entry.target.device, entry.record["batch_size"]), []).append((entry.record["backend"], stats.p50))
    for entry in entries:
        record = entry  # a skipped record is final as it is
        if isinstance(entry, _Pending):
            record = entry.record
            base, peer, p50 = measured.baseline_p50.get(entry.key), measured.peer_p50.get(entry.key), record["latency_ms"]["p50"]
            record["speedup_vs_baseline"] = round(base / p50, 4) if base else None
            record["speedup_vs_peer"] = round(peer / p50, 4) if peer else None
            parent = _parent_p50(own_p50.get((entry.target.parent, entry.target.device, record["batch_size"]), []), record["backend"])
            record["speedup_vs_parent"] = round(parent / p50, 4) if parent else None
        measured.records.append(record)
        if on_record:
            on_record(record)
    if all(r["skipped"] for r in measured.records):
        reasons = sorted({r["skipped"] for r in measured.records})
        if all("batch size" in reason for reason in reasons):  # the asked batch sizes, not missing hardware: bad usage (exit 2)
            raise InputError(f"nothing could be measured: {'; '.join(reasons)}")
        raise MissingDependencyError(f"nothing could be measured: {'; '.join(reasons)}")
    return {
        "schema_version": SCHEMA_VERSION,
        "created_at": now_iso(),
        "machine": describe_machine(),
        "command": command,
        "settings": {"warmup": config.latency.warmup, "min_runs": config.latency.min_runs, "min_time": config.latency.min_time, "rounds": config.latency.rounds,
                     "threads": threads, "batch_sizes": list(config.batch_sizes), "data": config.data, "batch_note": batch_note},
        "records": measured.records,
        "unsteady": _unsteady_summary(measured.records, remeasured),
    }


def _parent_p50(measured: list[tuple[str, float]], backend: str) -> float | None:
    """The parent's p50 on the same backend when the run has it, else on its own (first) one."""
    same = [p50 for b, p50 in measured if b == backend]
    return (same or [p50 for _, p50 in measured] or [None])[0]


def _unsteady_summary(records: list[dict], remeasured: bool) -> str | None:
    """One line for the reports when figures cannot be trusted, or None."""
    flagged = [r for r in records if r.get("unsteady")]
    if not flagged:
        return None
    again = "after one re-measurement of all figures" if remeasured else ""
    return (f"{len(flagged)} of {len(records)} figures are unsteady {again}: the machine was busy while they were taken "
            f"(flagged 'unsteady'); their ratios are not evidence, re-run on a quiet machine").replace("  ", " ")


def _fit_batch_sizes(target: _Target, config: BenchConfig, threads: int) -> tuple[BenchConfig, str | None]:
    """The default batch sizes shrunk by one timed run of the first target (the baseline when
    there is one: the slowest) at the smallest size (measure.latency.affordable_batch_sizes)."""
    if _is_engine(target.path) or target.backend == "tensorrt" or target.is_peer:
        return config, None
    try:
        loaded = load_model(target.path, input_spec=list(config.input_spec) or None)
        runner = runtime.runner_for(loaded, device=target.device, backend=target.backend, threads=threads)
        sizes, note = affordable_batch_sizes(lambda batch: runner(_feed(runner.input_spec, None, batch, config.seq_len)), config.batch_sizes)
    except AioptError:  # the target's own error comes, whole, when it is prepared
        return config, None
    return (replace(config, batch_sizes=sizes), note) if note else (config, None)


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _targets(artifacts: list[str], config: BenchConfig) -> list[_Target]:
    """Each artifact is compared with its own baseline: the trained FP32 model its lineage starts
    from (added when it exists and was not given). Baselines come first: their predictions and
    latencies are what the others are compared with."""
    roots = {path: (_lineage_root(path) if config.baseline else None) for path in artifacts}
    parents = {path: _parent_in_run(path, artifacts) for path in artifacts}
    baselines = list(dict.fromkeys(root for root in roots.values() if root))
    targets: list[_Target] = []
    for path in baselines + [p for p in artifacts if p not in baselines]:
        is_baseline = path in baselines
        for device in config.devices:
            for backend in config.backends or (None,):
                if is_baseline and backend not in (None, "torch"):
                    continue
                targets.append(_Target(path, "torch" if is_baseline else backend, device, is_baseline, label=path,
                                       baseline=path if is_baseline else roots.get(path), parent=parents.get(path)))
            if is_baseline and device.startswith("cuda"):  # the peer a GPU user tries first, right after its baseline
                targets.append(_Target(path, PEER_BACKEND, device, label=f"{path} [{PEER_BACKEND}]", baseline=path, is_peer=True))
    return targets


def _parent_in_run(path: str, artifacts: list[str]) -> str | None:
    """The nearest ancestor of `path` (its parent first, then up its lineage) that is one of
    `artifacts`: matched by the recorded path, or by name beside `path` (files copied together)."""
    try:
        metadata = _describe(path).metadata
    except (AioptError, OSError, ValueError):
        return None
    recorded = [(metadata.get("parent") or {}).get("path")] + [e.get("artifact") for e in reversed((metadata.get("lineage") or [])[:-1])]
    here = Path(path).resolve()
    run = {Path(a).resolve(): a for a in artifacts if Path(a).resolve() != here}
    for ancestor in filter(None, recorded):
        for candidate in (Path(ancestor), Path(path).parent / Path(ancestor).name):
            found = run.get(candidate.resolve())
            if found is not None:
                return found
    return None


def _lineage_root(path: str) -> str | None:
    """The trained FP32 checkpoint `path` descends from (itself, if it is one), where it still exists:
    beside `path` under the recorded name, or at the recorded path."""
    try:
        loaded = _describe(path)
    except (AioptError, OSError, ValueError):
        return None
    if loaded.metadata.get("step") == "train" and loaded.format == FORMAT_AIOPT:
        return path
    lineage = loaded.metadata.get("lineage") or []
    if lineage and lineage[0].get("step") == "train":
        recorded = Path(lineage[0]["artifact"])
        # Beside the artifact first: a folder of artifacts copied elsewhere keeps its own baseline.
        for candidate in (Path(path).parent / recorded.name, recorded):
            if candidate.is_file():
                return str(candidate)
    return None


def _skipped(target: _Target, batch: int, reason: str) -> dict:
    return {"artifact": target.path, "label": target.label, "backend": target.backend or "auto", "device": target.device, "batch_size": batch,
            "latency_ms": None, "throughput": None, "accuracy": None, "agreement": None, "cosine": None, "size_bytes": _size(target.path), "params": None,
            "flops": None, "peak_memory_bytes": None, "load_seconds": None, "compile_seconds": None, "speedup_vs_baseline": None,
            "speedup_vs_peer": None, "speedup_vs_parent": None, "is_baseline": target.is_baseline,
            "baseline": target.baseline, "parent": target.parent, "unsteady": None, "step": None, "format": None, "skipped": reason}


def _size(path: str) -> int | None:
    try:
        return artifact_size(path)
    except OSError:
        return None


@dataclass
class _Pending:
    """A record whose latency is still to be measured: its runner stays loaded until then."""

    target: _Target
    record: dict
    run: object
    cuda: bool

    @property
    def key(self) -> tuple:
        """Which baseline and peer p50 this record is compared with."""
        return self.target.baseline, self.target.device, self.record["batch_size"]


def _prepare_target(target: _Target, config: BenchConfig, threads: int, measured: _Measured) -> list:
    """Skipped records and _Pending ones (loaded, evaluated, warmed; peak memory taken) for `target`."""
    if (target.backend == "tensorrt" or _is_engine(target.path)) and importlib.util.find_spec("tensorrt") is None:
        reason = "TensorRT is not installed: pip install 'aiopt[tensorrt]' on a machine with an NVIDIA GPU"
        return [_skipped(target, b, reason) for b in config.batch_sizes]

    memory = PeakMemory(target.device)
    try:
        torch_device(target.device)  # no CUDA: a skipped record, before anything touches the GPU
        memory.start()
        start = time.perf_counter()
        if _is_engine(target.path) or target.backend == "tensorrt":
            runner = runtime.load(target.path, device=target.device, backend=target.backend, threads=threads)
            described = _describe(target.path)  # the sidecar
        else:  # loaded once: the Runner and the description share it
            loaded = load_model(target.path, input_spec=list(config.input_spec) or None)
            if target.is_peer:
                runner = _peer_runner(loaded, target.device, config.batch_sizes)
            else:
                runner = runtime.runner_for(loaded, device=target.device, backend=target.backend, threads=threads)
            described = _Described(loaded.format, loaded.metadata, count_parameters(loaded))
        load_seconds = time.perf_counter() - start
    except MissingDependencyError as exc:
        return [_skipped(target, b, str(exc)) for b in config.batch_sizes]
    except InputError as exc:
        if not any(hint in str(exc) for hint in ("use --backend", "export it first", "TensorRT engine", "--backend tensorrt")):
            raise
        return [_skipped(target, b, str(exc)) for b in config.batch_sizes]  # format/backend mismatch
    target.backend = runner.backend
    facts = _artifact_facts(target, runner, described, config, measured)
    records = []
    for batch in config.batch_sizes:
        fixed = _fixed_batch(runner.input_spec)
        if fixed is not None and fixed != batch:
            records.append(_skipped(target, batch, f"the model's batch size is fixed at {fixed}; export it with a dynamic batch to run batch {batch}"))
            continue
        problem = runner.batch_problem(batch)
        if problem:
            records.append(_skipped(target, batch, problem))
            continue
        feed = _feed(runner.input_spec, facts["_inputs"], batch, config.seq_len)
        run = functools.partial(runner, feed)
        for _ in range(config.latency.warmup):  # allocations at this batch size: what peak memory is about
            run()
        records.append(_Pending(target, {
            "artifact": target.path, "label": target.label, "backend": runner.backend, "device": runner.device, "batch_size": batch,
            "latency_ms": None, "throughput": None,
            **{k: v for k, v in facts.items() if not k.startswith("_")},
            "peak_memory_bytes": memory.peak_bytes(), "load_seconds": round(load_seconds, 4),
            "compile_seconds": _compile_seconds(runner),
            "speedup_vs_baseline": None, "speedup_vs_peer": None, "speedup_vs_parent": None, "is_baseline": target.is_baseline,
            "baseline": target.baseline, "parent": target.parent,
            "threads": threads, "skipped": None,
        }, run, target.device.startswith("cuda")))
    return records


def _peer_runner(loaded, device: str, batch_sizes: tuple[int, ...]) -> TorchRunner:
    """The FP16 model under torch.compile(mode="reduce-overhead"), compiled and warmed for each
    batch size here so that compilation stays out of the latency (it is `compile_seconds`)."""
    import torch

    from aiopt.export.torch_precision import cast_to  # its modules subclass torch's nn.Module: torch at its top

    input_spec = require_input_spec(loaded)
    device_ = require_cuda(device, f"the {PEER_BACKEND} peer")
    compiled = torch.compile(cast_to(loaded.model, "fp16").to(device_), mode="reduce-overhead")
    # the compiled module described by its specs alone: the factory's plain TorchRunner, not the artifact's CUDA graphs or padding trim
    described = replace(loaded, model=compiled, metadata={"outputs": [o.to_dict() for o in output_spec(loaded)]})
    runner = runtime.runner_for(described, device, "torch", trim_padding=False)
    runner.backend = PEER_BACKEND
    start = time.perf_counter()
    for batch in batch_sizes:
        feed = {s.name: t.numpy() for s, t in zip(input_spec, example_inputs(input_spec, batch))}
        for _ in range(WARMUP_CALLS):
            runner(feed)
    torch.cuda.synchronize(device_)
    runner.compile_seconds = time.perf_counter() - start
    return runner


def _compile_seconds(runner) -> float | None:
    """Compilation and graph capture done at load (torch-cuda artifacts, the peer), apart from latency."""
    seconds = getattr(runner, "compile_seconds", None)
    return round(seconds, 3) if seconds is not None else None


def _artifact_facts(target: _Target, runner, loaded: _Described, config: BenchConfig, measured: _Measured) -> dict:
    """What does not depend on the batch size: accuracy, agreement, size, params, FLOPs."""
    try:
        evaluation = eval_data(runner.input_spec, loaded.metadata, config.data, seq_len=config.seq_len)
    except InputError:
        if config.data is not None:
            raise  # the user's --data does not fit: say so rather than measure without it
        evaluation = None
    logits = run_batches(runner, evaluation)[0] if evaluation is not None else None
    agreement = cosine = None
    if logits is not None:
        if target.is_baseline:
            measured.baseline_logits.setdefault(target.baseline, logits)
        reference = measured.baseline_logits.get(target.baseline)
        if reference is not None and reference.shape == logits.shape:
            quality = compare_outputs(reference, logits)
            # top-1 agreement means something for class scores only; embeddings get cosine
            kind, _ = output_kind(loaded.metadata, runner.output_names[0], logits.shape)
            agreement = quality.get("top1_agreement") if kind == "classification" else None
            cosine = quality["mean_cosine"]
    return {
        "accuracy": accuracy(logits, evaluation.labels) if logits is not None and evaluation.labels is not None else None,
        "agreement": agreement,
        "cosine": cosine,
        "size_bytes": artifact_size(target.path),
        "params": loaded.params,
        "flops": flops_of(loaded, runner.input_spec),
        "step": loaded.metadata.get("step"),
        "format": loaded.format,
        "_inputs": evaluation.inputs if evaluation is not None else None,
    }


def _is_engine(path: str) -> bool:
    return str(path).endswith(ENGINE_SUFFIXES)


@dataclass
class _Described:
    format: str
    metadata: dict
    params: int | None


def _describe(path: str) -> _Described:
    """Format, metadata and parameter count; an engine's come from its sidecar."""
    if _is_engine(path):
        sidecar = json.loads(sidecar_path(path).read_text())
        metadata = sidecar.get("aiopt_metadata") or {}
        return _Described("tensorrt-engine", metadata, metadata.get("params_count"))
    loaded = load_model(path)
    return _Described(loaded.format, loaded.metadata, count_parameters(loaded))


def flops_of(loaded, spec) -> int | None:
    """FLOPs of one sample (2 x multiply-accumulates), from the architecture the metadata records;
    quantization does not change the count, so ONNX and TorchScript descendants inherit it."""
    metadata = loaded.metadata
    if not metadata.get("architecture") or not metadata.get("config"):
        return None
    try:
        macs, _ = count_macs_and_params(build_model(metadata["architecture"], metadata["config"]), spec)
    except (AioptError, RuntimeError, ValueError, TypeError):
        return None
    return 2 * macs


def _fixed_batch(spec) -> int | None:
    return fixed_batch(spec)  # a state 2 x batch x 128 has a dynamic batch, not a fixed batch of 2


def _feed(spec, inputs: dict | None, batch: int, seq_len: int = 128) -> dict[str, np.ndarray]:
    if inputs is None:
        return {s.name: t.numpy() for s, t in zip(spec, example_inputs(spec, batch, seq_len))}

    return {s.name: to_model_layout(np.resize(inputs[s.name], (batch, *inputs[s.name].shape[1:])), s).astype(s.dtype) for s in spec}
