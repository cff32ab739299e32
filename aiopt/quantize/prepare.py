"""What every recipe starts from: the FP32 ONNX (the input checked, or its validated export;
specialised for fixed inputs; ORT's pre-processing), the data quality is measured on, and the
batch sizes this machine can time. Below both the forced and the measured path."""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from aiopt.artifacts import FORMAT_ONNX, LoadedModel, example_inputs
from aiopt.errors import AioptError, InputError
from aiopt.evaluate import EvalData, eval_data
from aiopt.export.onnx import OnnxExportConfig, export_onnx, specialise_fixed_inputs
from aiopt.measure.deployed import batch_feed
from aiopt.measure.latency import affordable_batch_sizes
from aiopt.quantize.config import QuantizeConfig
from aiopt.quantize.recipes.onnxruntime import preprocess
from aiopt.runtime import runner_for
from aiopt.runtime.onnxruntime_backend import make_session
from aiopt.specs import fed_by_data, to_sample_first


def fit_batch_sizes(prepared: Path, spec, data, config: QuantizeConfig, say) -> QuantizeConfig:
    """The default batch sizes (and the forced recipe's quick latency batch) shrunk when one
    FP32 run at the largest would take seconds (measure.latency.affordable_batch_sizes), said up
    front. Sizes the user passed (-b) are kept."""
    if not config.fit_batch_sizes:
        return config
    try:
        runner = ort_runner(prepared, spec)
        asked = config.batch_sizes if config.by_measurement else (1, config.latency_batch)
        sizes, note = affordable_batch_sizes(lambda batch: runner(batch_feed(data, spec, batch)), asked)
    except AioptError:  # the model's own error comes, whole, from the step that needs it
        return config
    if note is None:
        return config
    say(f"note: {note}")
    return replace(config, batch_sizes=sizes, latency_batch=max(sizes)) if config.by_measurement else replace(config, latency_batch=max(sizes))


def ort_runner(graph: Path, spec, device: str = "cpu"):
    """A work graph (the prepared FP32, a recipe's build) on ONNX Runtime, made by the one runner
    factory, `runtime.runner_for`, as the measured choice makes its candidates' runners."""
    return runner_for(LoadedModel(Path(graph), FORMAT_ONNX, None, {}, list(spec)), device, backend="onnxruntime")


def prepare_fp32(loaded, source, work: Path, trust_pickle: bool, input_spec, say) -> tuple[Path, str, dict | None]:
    """The FP32 ONNX every recipe starts from, in `work`: the input itself when it is ONNX (after
    checking ONNX Runtime loads it), else its validated export; then ORT's pre-processing.
    Returns (pre-processed graph, the pre-processing path taken, the export record or None)."""
    fp32 = work / "fp32.onnx"
    source_export = None
    if loaded.format == FORMAT_ONNX:
        make_session(str(loaded.path))  # an op ORT lacks fails here, in one line, not inside its pre-processing
        shutil.copyfile(loaded.path, fp32)
    else:
        say("exporting to ONNX (validated against PyTorch)")
        source_export = _export_fp32(source, fp32, trust_pickle, input_spec)
    prepared = work / "prepared.onnx"
    fp32 = _specialised(fp32, loaded.input_spec, say)
    return prepared, preprocess(fp32, prepared), source_export


def taken_by(spec, graph: Path) -> list:
    """The inputs `graph` takes: a fixed input folded away by specialisation is not fed to it."""
    import onnx

    taken = {i.name for i in onnx.load(str(graph), load_external_data=False).graph.input}
    return [s for s in spec if s.value is None or s.name in taken]


def _specialised(fp32: Path, spec, say) -> Path:
    """With fixed inputs (--input sr=16000), the graph specialised for them (If/Loop on them folded
    away) before ORT's pre-processing, which cannot follow control flow."""
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
    result = export_onnx(source, target, OnnxExportConfig(), force=True, trust_pickle=trust_pickle, input_spec=input_spec)
    return {"exporter": result.exporter, "opset": result.opset, "validation": result.validation}


def evaluation_data(spec, metadata: dict, data: str | None, calibration=None, say=lambda message: None, seq_len: int = 128):
    """The model's test split (or --data); without either, calibration or random inputs, which
    measure agreement with the parent but no accuracy."""
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
    fed = fed_by_data(spec)  # held sample-first, as data files are; fixed inputs come from the spec
    return EvalData({s.name: to_sample_first(t.numpy(), s) for s, t in zip(fed, example_inputs(fed, 64))}, None, "random inputs")
