"""A recipe forced by name (`--method static|dynamic|fp16`, `--backend onnxruntime|tensorrt`):
build it on ONNX Runtime, measure it against the FP32 graph it came from, and (with
`--max-accuracy-drop`) keep the most harmful layers in float until the drop fits.
"""
from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from aiopt.artifacts import load_model, require_input_spec
from aiopt.errors import InputError
from aiopt.evaluate import accuracy, run_batches
from aiopt.export.float16 import FLOAT32_SENSITIVE_OPS
from aiopt.fileio import check_output_path
from aiopt.hardware import detect_cpu, int8_kernel_for
from aiopt.quantize.against_parent import measure_against_parent
from aiopt.quantize.calibration import calibration_set
from aiopt.quantize.candidates import RECURRENT_OPS, BuildContext
from aiopt.quantize.config import QuantizeConfig, QuantizeResult, default_output
from aiopt.quantize.precision import graph_precision
from aiopt.quantize.prepare import evaluation_data, fit_batch_sizes, ort_runner, prepare_fp32, taken_by
from aiopt.quantize.recipes import onnxruntime as ort
from aiopt.quantize.registry import BUILDERS, forced_recipe
from aiopt.quantize.write import write_forced
from aiopt.runtime.onnxruntime_backend import providers_for
from aiopt.specs import parse_fixed_inputs, with_fixed_values


def quantize_forced(source, output, config: QuantizeConfig, force: bool, trust_pickle: bool, input_spec, say) -> QuantizeResult:
    """The named recipe on ONNX Runtime (or, --backend torch, in PyTorch), measured and written."""
    loaded = load_model(source, trust_pickle=trust_pickle, input_spec=input_spec)
    loaded.input_spec = with_fixed_values(loaded.input_spec, parse_fixed_inputs(config.fixed_inputs))
    spec = require_input_spec(loaded)
    calibration = None
    if config.method in ("auto", "static") and config.backend != "torch":
        calibration = calibration_set(config.calibration, spec, loaded.metadata, config.calib_samples, config.seed, config.seq_len)
    method, reason = _choose_method(config, calibration is not None)
    out = check_output_path(output or default_output(source, config, method), source, config.calibration, config.data, force=force)
    say(f"method: {method} ({reason})")
    if config.backend == "torch":
        from aiopt.quantize.forced_torch import quantize_torch  # loads torch: only --backend torch pays for it

        return quantize_torch(loaded, spec, config, method, reason, out)
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
        write_forced(job.result_path, out, loaded, spec, report)
    return QuantizeResult(str(out), method, reason, report.pop("_metadata"), report)


def _honest_default(written: Path, out: Path, output, source, config: QuantizeConfig, report: dict, say, force: bool) -> Path:
    """The default name says what the written graph holds: a forced INT8 recipe that quantized
    nothing (ONNX Runtime's dynamic INT8 leaves Conv layers alone) is written as `.fp32`."""
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


class _QuantizeJob:
    """One quantization run: build the quantized graph, measure it against FP32, and (with a
    budget) keep the most harmful layers in float until the accuracy drop fits."""

    def __init__(self, config: QuantizeConfig, method: str, spec, loaded, prepared: Path, work: Path, calibration, say):
        self.config, self.method, self.spec, self.loaded = config, method, taken_by(spec, prepared), loaded
        self.prepared, self.work, self.calibration, self.say = prepared, work, calibration, say
        self.cpu = detect_cpu()
        self.kernel = int8_kernel_for(self.cpu)
        self.nodes = ort.graph_nodes(prepared)
        self._trial = 0
        self.recipe = forced_recipe(method, config.backend, config.per_channel)
        self.ctx = BuildContext(prepared, work, self.spec, calibration, self.kernel, self.nodes, tuple(config.exclude),
                                calib_method=config.calib_method, calibration_providers=self._providers())
        self.recurrent = self.ctx.recurrent

    def _providers(self) -> tuple[str, ...]:
        return () if self.config.device == "cpu" else tuple(providers_for(self.config.device))

    @property
    def for_tensorrt(self) -> bool:
        return self.config.backend == "tensorrt"

    def run(self) -> dict:
        data = evaluation_data(self.spec, self.loaded.metadata, self.config.data, self.calibration, self.say, self.config.seq_len)
        reference_runner = ort_runner(self.prepared, self.spec, self.config.device)
        kept: list[str] = []
        self.result_path = self._quantize(tuple(self.config.exclude))
        selection = None
        if self.config.max_accuracy_drop is not None:
            selection = self._select_layers()
            kept = selection["kept_float"]
            self.result_path = self._quantize(tuple(self.config.exclude) + tuple(kept))
        runner = ort_runner(self.result_path, self.spec, self.config.device)
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
        """The named recipe built by its registry entry (the measured choice's builder), with
        `exclude` kept in float; each build kept under its own name (layer selection compares them)."""
        self._trial += 1
        built = BUILDERS[self.recipe](replace(self.ctx, exclude=exclude))
        target = self.work / f"candidate-{self._trial}.onnx"
        Path(built.path).replace(target)
        return target

    # ------------------------------------------------------------ layer selection
    def _candidate_layers(self) -> list[str]:
        if self.method == "fp16":
            ops = {op for _, op in self.nodes} - set(FLOAT32_SENSITIVE_OPS)
        elif self.method == "dynamic":
            ops = set(ort.DYNAMIC_OPS)
        else:
            ops = set(ort.COMPUTE_OPS + RECURRENT_OPS)
        return [name for name, op in self.nodes if op in ops and name not in self.config.exclude]

    def _select_layers(self) -> dict:
        """Greedy sensitivity search on held-out training samples (never the test split):
        score each layer by the accuracy regained when it alone stays in float, then keep the
        worst offenders in float, one at a time, until the drop fits the budget."""
        selection = self.calibration.selection if self.calibration is not None else None
        if selection is None:
            raise InputError("--max-accuracy-drop needs labelled held-out data: use a built-in dataset for --calibration, or drop the option")
        budget = self.config.max_accuracy_drop

        def score(path: Path) -> float:
            return accuracy(run_batches(ort_runner(path, self.spec, self.config.device), selection)[0], selection.labels)

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
