"""`aiopt quantize` with no recipe forced: build the candidates this machine can run, keep
those that meet the quality floor on held-out data, time them here, write the fastest.

Never ships a slower model: FP32 on ONNX Runtime and on OpenVINO are candidates like the
INT8 ones, and when no reduced-precision candidate beats them the FP32 graph is written,
with a line saying so.
"""
from __future__ import annotations

import importlib.util
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from aiopt.artifacts import artifact_size, load_model, onnx_value_specs, require_input_spec
from aiopt.errors import CheckFailedError, InputError
from aiopt.evaluate import EvalData, run_batches
from aiopt.fileio import check_output_path
from aiopt.hardware import detect_cpu, int8_kernel_for
from aiopt.measure.quality import DEFAULT_MAX_ACCURACY_DROP, QualityFloor, compare_outputs, judge_outputs, metric_for, parse_metric_options
from aiopt.measure.streaming import parse_state_pairs
from aiopt.quantize.calibration import calibration_set
from aiopt.quantize.candidates import BuildContext, Candidate
from aiopt.quantize.config import QuantizeResult
from aiopt.quantize.precision import describe, output_suffix, relabel
from aiopt.quantize.prepare import evaluation_data, fit_batch_sizes, prepare_fp32
from aiopt.quantize.recipes import onnxruntime as onnx_quant
from aiopt.quantize.recipes.weight_only import quantize_weights_int8
from aiopt.quantize.registry import BUILDERS, MEASURED, build_all
from aiopt.quantize.select import (TIE, TOO_LARGE, UNSTEADY_VERDICT, Reference, Selection, bf16_on_openvino, by_batch, choose, confirm_fastest,
                                    make_runner, measure_quality, measure_speed, single_threaded, twins_on_other_runtime)
from aiopt.quantize.sensitivity import diagnose, rank_on_calibration
from aiopt.quantize.write import write_chosen
from aiopt.specs import fixed_batch, parse_fixed_inputs, with_fixed_values

# A trimmed-padding runner must reproduce the untrimmed outputs to rounding.
MIN_TRIM_COSINE = 0.9999
# Held out of a user's calibration file for evaluation when no --data is given.
HELD_OUT_FRACTION = 0.25
# The shipped files may exceed the input by this factor (shape annotations, aiopt metadata), no more.
SIZE_SLACK = 1.01


def quantize_by_measurement(source, output, config, force: bool, trust_pickle: bool, input_spec, say):
    import onnx


    if output is not None:  # a bad -o fails before the work
        check_output_path(output, source, config.calibration, config.data, force=force)
    loaded = load_model(source, trust_pickle=trust_pickle, input_spec=input_spec)
    loaded.input_spec = with_fixed_values(loaded.input_spec, parse_fixed_inputs(config.fixed_inputs))
    spec = require_input_spec(loaded)
    scalars = [s.name for s in spec if s.shape == () and s.value is None]
    if scalars:  # one value for a whole batch cannot come from data rows
        raise InputError(f"input {scalars[0]!r} is a scalar (0-d): give the value it always takes, e.g. --input {scalars[0]}=16000")
    config = _at_the_fixed_batch(spec, config, say)
    calibration = calibration_set(config.calibration, spec, loaded.metadata, config.calib_samples, config.seed, config.seq_len)
    for note in getattr(calibration, "notes", ()):
        say(note)
    calibration, held_out = _hold_out(calibration, config.data)
    data = held_out or evaluation_data(spec, loaded.metadata, config.data, calibration, say, config.seq_len)
    if parse_metric_options(config.metric)[0] == "accuracy" and data.labels is None:  # said before the export, not after
        raise InputError("--metric accuracy needs labels: pass --data FILE.npz with a y array, or use --metric agreement or cosine")
    with tempfile.TemporaryDirectory(prefix="aiopt-quantize-") as work:
        work = Path(work)
        prepared, preprocessing, source_export = prepare_fp32(loaded, source, work, trust_pickle, input_spec, say)
        config = fit_batch_sizes(prepared, spec, data, config, say)  # a 640x640 detector is not timed at batch 64
        kernel = int8_kernel_for(detect_cpu())
        graph = onnx.load(str(prepared), load_external_data=False).graph
        # a graph specialised for a fixed input no longer takes it: calibration feeds only what it takes
        taken = {i.name for i in graph.input}
        ctx = BuildContext(prepared, work, [s for s in spec if s.name in taken], calibration, kernel, onnx_quant.graph_nodes(prepared),
                           tuple(config.exclude), outputs=onnx_value_specs(graph.output))
        pairs = parse_state_pairs(config.state, spec, ctx.outputs)
        reference = Reference.measure(make_runner(BUILDERS["fp32"](ctx), ctx.spec), data, pairs)
        if reference.note:
            say(reference.note)
        pairs = reference.pairs
        floor, metric_reason = _quality_floor(loaded.metadata, ctx.outputs, reference, data, config, pairs)
        say(f"quality: {floor.describe()} ({metric_reason}), on {data.source} ({len(data)} samples"
            + (f"; chunk by chunk and as streams feeding back {', '.join(f'{k}<-{v}' for k, v in pairs.items())})" if pairs else ")"))
        # never larger than what came in, unless asked for speed at any size (--objective latency)
        # (1% for the shape annotations and aiopt metadata any written graph carries)
        size_limit = None if config.objective == "latency" else int(max(artifact_size(source), prepared.stat().st_size) * SIZE_SLACK)
        selection = select(ctx, data, floor, config, say, reference, size_limit)
        if selection.chosen is None:
            raise CheckFailedError(_nothing_meets(selection))
        chosen = selection.chosen
        out = Path(output) if output is not None else _default_output(source, chosen)
        check_output_path(out, source, config.calibration, config.data, force=force)
        report = _report(selection, floor, metric_reason, data, calibration, kernel, preprocessing, source_export, work / "fp32.onnx")
        write_chosen(chosen, out, loaded, spec, report, (source, config.calibration, config.data), force)
        say(selection.verdict)
    return QuantizeResult(str(out), "auto", selection.verdict, report.pop("_metadata"), report)


def _at_the_fixed_batch(spec, config, say):
    """A model whose batch is fixed is timed at that batch only, said before anything is built."""

    fixed = fixed_batch(spec)
    if fixed is None or config.batch_sizes == (fixed,):
        return config
    say(f"the model's batch size is fixed at {fixed} (input {spec[0].name}: {'x'.join(map(str, spec[0].shape))}): candidates are timed "
        f"at batch {fixed} only, not {', '.join(map(str, config.batch_sizes))}")
    return replace(config, batch_sizes=(fixed,))


def _quality_floor(metadata, outputs, reference, data, config, pairs) -> tuple[QualityFloor, str]:
    """The floor every candidate meets: each output judged by what it is, the worst decides."""
    judges = judge_outputs(metadata, outputs, reference.outputs, data.labels is not None, config.metric, set(pairs.values()))
    legacy, _ = parse_metric_options(config.metric)
    metric = legacy or metric_for(judges[0], data.labels is not None)
    floor = QualityFloor(metric, config.max_accuracy_drop if config.max_accuracy_drop is not None else DEFAULT_MAX_ACCURACY_DROP,
                         config.min_cosine, judges=judges)
    return floor, "; ".join(f"{j.name}: {j.why}" for j in judges)


def select(ctx: BuildContext, data, floor: QualityFloor, config, say, reference_outputs, size_limit: int | None = None) -> Selection:
    """Build, check and time every candidate; then try storing the winner's remaining float
    weights in INT8, kept only when it costs neither quality nor speed. `reference_outputs`:
    the FP32 graph's (select.Reference); `size_limit`: bytes the shipped files may take at most."""
    allowed = [n for n in (config.candidates or MEASURED) if config.backend != "openvino" or "openvino" in n]
    if config.backend == "openvino" and config.method == "static":
        allowed = ["int8-nncf-openvino"]
    # FP32 on ONNX Runtime is always built and timed: it is the yardstick of every ratio
    candidates = build_all(ctx, ["fp32", *[n for n in allowed if n != "fp32"]], say)
    relabel(candidates, say)  # a recipe that quantized nothing is not INT8
    reference = candidates[0]
    runners = measure_quality(candidates, reference_outputs, data, ctx.spec, floor, say, ctx.outputs)

    def admit(new: list[Candidate]) -> list[Candidate]:
        runners.update(measure_quality(new, reference_outputs, data, ctx.spec, floor, say, ctx.outputs))
        candidates.extend(new)
        allowed.extend(c.name for c in new)
        return new

    diagnosis = diagnose(candidates, ctx.prepared, ctx.calibration, ctx.spec, ctx.work)  # which layers cost the floor
    for line in diagnosis:
        say(line)
    mixed, mixed_runners = _mixed_precision(ctx, candidates, reference_outputs, data, floor, say)
    runners.update(mixed_runners)
    candidates += mixed
    allowed += [c.name for c in mixed]
    if _has_openvino() and config.backend == "auto":
        admit(twins_on_other_runtime([c for c in candidates if c.name in allowed]))
    if config.backend in ("auto", "openvino"):
        admit(bf16_on_openvino([c for c in candidates if c.name in allowed]))
    measure_speed(candidates, runners, data, ctx.spec, config.batch_sizes, say)
    one_thread = admit(single_threaded(candidates, config.batch_sizes, set(allowed)))
    finalists = confirm_fastest(candidates, reference, runners, data, ctx.spec, config.batch_sizes, set(allowed), say, extra=one_thread)
    routed = by_batch(finalists, config.batch_sizes, floor) if config.backend == "auto" else []
    candidates += routed
    allowed += [c.name for c in routed]
    selection = choose(candidates, reference, config.batch_sizes, floor, eligible=set(allowed), max_size_bytes=size_limit)
    selection.notes += diagnosis
    _try_int8_weights(selection, ctx, data, reference_outputs, floor, say)
    _try_trim_padding(selection, ctx, data, reference_outputs, floor, say)
    return selection


def _mixed_precision(ctx: BuildContext, candidates: list[Candidate], reference_outputs, data, floor: QualityFloor, say) -> tuple[list[Candidate], dict]:
    """For each INT8 recipe that misses the floor, keep its most sensitive layers in float
    (ranked by ONNX Runtime's SQNR on calibration data), a few more each time, until it meets
    the floor; the first that does becomes a candidate (returned with the runner it was measured
    with). Tried only when no INT8 recipe met it."""

    by_name = {c.name: c for c in candidates}
    static = by_name.get("int8-static-per-channel")
    if ctx.calibration is None or static is None or static.quality is None or any(
            c.precision == "int8" and c.quality is not None and not c.problem for c in candidates):
        return [], {}
    say("no INT8 recipe meets the floor: ranking layers by quantization noise (ONNX Runtime's QDQ debugger, calibration data)")
    ranked = rank_on_calibration(ctx.prepared, static.path, ctx.calibration, ctx.spec, ctx.work)
    found, runners = [], {}
    for base in ("int8-static-per-channel", "int8-dynamic"):
        if by_name.get(base) is None or by_name[base].quality is None:
            continue
        count = 1
        while count <= max(1, len(ranked) // 2):
            kept = tuple(name for name, _ in ranked[:count])
            work = ctx.work / f"{base}-mixed-{count}"
            work.mkdir(exist_ok=True)
            if (ctx.work / "calibration-cache.json").exists():
                shutil.copyfile(ctx.work / "calibration-cache.json", work / "calibration-cache.json")
            candidate = BUILDERS[base](replace(ctx, work=work, exclude=tuple(ctx.exclude) + kept))
            candidate.name = f"{base}-mixed"
            candidate.recipe = {**candidate.recipe, "kept_float": list(kept), "sqnr_db": {n: round(v, 2) for n, v in ranked[:count]}}
            measured = measure_quality([candidate], reference_outputs, data, ctx.spec, floor, lambda message: None, ctx.outputs)
            say(f"{base} with {count} layer(s) in float: {floor.summary(candidate.quality)}")
            if not candidate.problem:
                found.append(candidate)
                runners.update(measured)
                break
            count *= 2
    return found, runners


def _try_int8_weights(selection: Selection, ctx: BuildContext, data, reference_outputs, floor: QualityFloor, say) -> None:
    """The winner with its remaining float weights stored in INT8: smaller, same kernels."""
    chosen = selection.chosen
    if chosen is None or chosen.runtime == "dispatch" or chosen.precision == "int8-weights":
        return
    target = ctx.work / f"{chosen.name}+int8-weights.onnx"
    touched = quantize_weights_int8(chosen.path, target)
    if touched:
        variant = Candidate(f"{chosen.name}+int8-weights", chosen.precision if chosen.precision != "fp32" else "int8-weights", chosen.runtime,
                            target, {**chosen.recipe, "weights_int8": touched}, serving=dict(chosen.serving))
        _head_to_head(selection, variant, ctx, data, reference_outputs, floor, say,
                      f"{len(touched)} float tensor(s) stored in INT8 at no cost in speed or quality")


def _try_trim_padding(selection: Selection, ctx: BuildContext, data, reference_outputs, floor: QualityFloor, say) -> None:
    """The winner served with all-padding columns cut off: exact for a masked model with pooled
    outputs, checked here against the untrimmed outputs before it may ship."""
    chosen = selection.chosen
    mask = next((s for s in ctx.spec if s.name == "attention_mask"), None)
    if chosen is None or mask is None or len(mask.shape) < 2 or not isinstance(mask.shape[1], str):
        return
    if any(mask.shape[1] in o.shape for o in ctx.outputs):
        selection.notes.append("padding not trimmed: an output has a sequence axis")
        return
    variant = Candidate(f"{chosen.name}+trim-padding", chosen.precision, chosen.runtime, chosen.path, dict(chosen.recipe),
                        serving={**chosen.serving, "trim_padding": True})


    untrimmed = run_batches(make_runner(chosen, ctx.spec, outputs=ctx.outputs), data)
    trim_runner = make_runner(variant, ctx.spec, outputs=ctx.outputs)
    trimmed = run_batches(trim_runner, data)
    check = compare_outputs(untrimmed[0], trimmed[0])
    # Exact on ONNX Runtime (difference 0); OpenVINO picks kernels by sequence length and moves
    # the last digits. Anything beyond rounding means the mask does not cover the padding.
    if check["min_cosine"] < MIN_TRIM_COSINE:
        selection.notes.append(f"padding not trimmed: without the padding columns the outputs moved (min cosine to the untrimmed "
                               f"outputs {check['min_cosine']:.6f} < {MIN_TRIM_COSINE})")
        return
    variant.recipe["trim_padding_check"] = {"vs_untrimmed": check, "samples": len(data)}
    variant.quality = reference_outputs.judge(trim_runner, data, floor, produced=trimmed)
    variant.problem = floor.problem(variant.quality)
    _head_to_head(selection, variant, ctx, data, reference_outputs, floor, say,
                  f"padding columns trimmed per batch (min cosine to the untrimmed outputs {check['min_cosine']:.6f})", trim_runner)


def _head_to_head(selection: Selection, variant: Candidate, ctx: BuildContext, data, reference_outputs, floor: QualityFloor, say, why: str,
                  runner=None) -> None:
    """Time `variant` against the current winner in one interleaved run; it replaces the winner
    when it meets the floor and is not slower at any batch size. `runner`: the variant's, when
    its quality was already measured with it."""
    chosen = selection.chosen
    runners = {variant.name: runner} if runner is not None else measure_quality([variant], reference_outputs, data, ctx.spec, floor, say, ctx.outputs)
    selection.candidates.append(variant)
    if variant.problem:
        return
    runners[chosen.name] = make_runner(chosen, ctx.spec, outputs=ctx.outputs)
    rerun = Candidate(chosen.name, chosen.precision, chosen.runtime, chosen.path)
    measure_speed([rerun, variant], runners, data, ctx.spec, selection.batch_sizes, say)
    ratio = {b: variant.latency_ms[b] / rerun.latency_ms[b] for b in selection.batch_sizes}
    # the variant's times are scaled to the winner's earlier run, so every row reads on one scale
    variant.latency_ms = {b: chosen.latency_ms[b] * ratio[b] for b in selection.batch_sizes}
    if max(ratio.values()) <= 1 + TIE:
        selection.chosen = variant
        selection.notes.append(f"{variant.name}: {why} ({', '.join(f'{1 / r:.2f}x at batch {b}' for b, r in ratio.items())} vs {chosen.name})")
        speed = ", ".join(f"{selection.speedup(variant, b):.2f}x at batch {b}" for b in selection.batch_sizes)
        selection.verdict = f"{variant.name} on {variant.runtime}: {speed} vs FP32 ONNX Runtime, within the floor ({floor.describe()})"
        if variant.unsteady or rerun.unsteady or chosen.unsteady:
            selection.verdict += UNSTEADY_VERDICT


def _has_openvino() -> bool:
    return importlib.util.find_spec("openvino") is not None


def _hold_out(calibration, data: str | None):
    """Without --data and without a built-in test split, a user's calibration file is split:
    the last quarter is kept out of calibration and measures quality instead."""

    if calibration is None or data is not None or calibration.selection is not None or len(calibration) < 8:
        return calibration, None
    count = max(2, int(len(calibration) * HELD_OUT_FRACTION))
    kept = {k: v[:-count] for k, v in calibration.inputs.items()}
    held = EvalData({k: v[-count:] for k, v in calibration.inputs.items()}, None, f"{calibration.source} (held out of calibration)")
    return replace(calibration, inputs=kept), held


def _default_output(source, chosen: Candidate) -> Path:
    """Named by what the written files hold (precision.py), not by the recipe."""
    source = Path(source)
    files = [chosen.path, *[f for f in chosen.files if f != chosen.path]]
    return source.with_name(source.name.removesuffix(source.suffix) + output_suffix(files))


def _nothing_meets(selection: Selection) -> str:
    scored = [c for c in selection.candidates if c.quality and c.problem]  # the reference may be outside --candidate: not "closest"
    closest = sorted(scored, key=lambda c: -(selection.floor.value(c.quality) or 0))[:3]
    listed = "; ".join(f"{c.name}: {c.problem}" for c in closest) or "none could be measured"
    if closest and all(c.problem.startswith(TOO_LARGE) for c in closest):  # quality was met: size ruled them out
        return (f"every candidate that meets the quality floor ({selection.floor.describe()}) is larger than the input; closest: {listed}. "
                "Pass --objective latency to ship a larger file")
    return f"no candidate meets the quality floor ({selection.floor.describe()}); closest: {listed}. Relax --max-accuracy-drop/--min-cosine or exclude sensitive layers"


def _report(selection: Selection, floor, metric_reason, data, calibration, kernel, preprocessing, source_export, fp32: Path) -> dict:
    chosen = selection.chosen
    quality = chosen.quality or {}
    held = describe(chosen)
    return {
        "method": "auto", "chosen": chosen.name, "precision": chosen.precision, "runtime": chosen.runtime, "recipe": chosen.recipe,
        "stored_precision": held["stored"], "compute_precision": held["compute"],
        "reason": selection.verdict, "metric": floor.metric, "metric_reason": metric_reason, "floor": floor.to_dict(), "quality": quality,
        "accuracy": quality.get("accuracy"), "fp32_accuracy": quality.get("reference_accuracy"), "accuracy_drop": quality.get("accuracy_drop"),
        "eval_data": data.source, "samples": len(data),
        "calibration": {"source": calibration.source, "samples": len(calibration)} if calibration is not None else None,
        "int8_kernel": kernel.to_dict(), "preprocessing": preprocessing, "source_export": source_export,
        "fp32_size_bytes": fp32.stat().st_size, "size_bytes": chosen.size_bytes,
        "latency": {str(b): {"fp32_p50_ms": selection.reference.latency_ms.get(b), "p50_ms": chosen.latency_ms.get(b),
                             "speedup": selection.speedup(chosen, b)} for b in selection.batch_sizes},
        "selection": selection.to_dict(),
    }
