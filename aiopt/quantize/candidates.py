"""The candidates `aiopt quantize` weighs when no recipe is forced, and how each is built.

Every candidate is a real file made from the same pre-processed FP32 graph, paired with the
runtime it ships for. A registry maps a name to a builder, so adding a recipe is one entry.
Builders that need what is absent here (calibration data, OpenVINO, a CPU without the right
kernels) say why instead of building; the selection (select.py) measures the rest.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiopt.quantize.recipes import onnxruntime as onnx_quant


@dataclass
class Candidate:
    name: str
    precision: str  # "fp32", "int8", "int8-weights" (weights stored in INT8, compute in float)
    runtime: str  # "onnxruntime" or "openvino"
    path: Path
    recipe: dict = field(default_factory=dict)
    quality: dict | None = None
    problem: str | None = None  # why it cannot ship (failed to build, or misses the floor)
    latency_ms: dict[int, float] = field(default_factory=dict)
    serving: dict = field(default_factory=dict)  # how the Runner serves it, e.g. {"trim_padding": True}
    files: list[Path] = field(default_factory=list)  # a by-batch candidate's files (default: `path`)
    unsteady: dict[int, str] = field(default_factory=dict)  # batch -> why its figure cannot be trusted (measure.latency)

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.files or [self.path]) if p.is_file())

    def to_dict(self) -> dict:
        return {"name": self.name, "precision": self.precision, "runtime": self.runtime, "recipe": self.recipe,
                "size_bytes": self.size_bytes, "quality": self.quality, "problem": self.problem, "serving": self.serving,
                "latency_ms": {str(b): round(v, 4) for b, v in self.latency_ms.items()},
                "unsteady": {str(b): why for b, why in self.unsteady.items()}}


@dataclass
class BuildContext:
    """What every builder may use: the FP32 graph, calibration data, the CPU's INT8 kernel."""

    prepared: Path
    work: Path
    spec: list
    calibration: object | None  # calibration.CalibrationSet
    kernel: object  # cpu.Int8KernelChoice
    nodes: list[tuple[str, str]]
    exclude: tuple[str, ...] = ()
    outputs: list = field(default_factory=list)  # output specs of the FP32 graph

    @property
    def recurrent(self) -> list[str]:
        return [name for name, op in self.nodes if op in onnx_quant.RECURRENT_OPS]

    @property
    def is_transformer(self) -> bool:
        return any(op in ("Softmax", "Attention", "MultiHeadAttention") for _, op in self.nodes)

    def target(self, name: str) -> Path:
        return self.work / f"{name}.onnx"


class Unavailable(Exception):
    """A builder cannot make its candidate here (the message says why)."""


def static_int8(prepared: Path, target: Path, calibration, spec, options: onnx_quant.StaticInt8Options, recurrent: list[str],
                cache: Path, recurrent_dynamic: bool = True) -> None:
    """Static QDQ INT8. Recurrent cells get no speed from QDQ on ONNX Runtime: the rest is
    quantized statically, then LSTM nodes dynamically (DynamicQuantizeLSTM runs in INT8)."""
    from aiopt.quantize.calibration import OrtCalibrationReader

    reader = OrtCalibrationReader(calibration, spec)
    if not recurrent or not recurrent_dynamic:
        onnx_quant.quantize_static_qdq(prepared, target, reader, options, cache)
        return
    partial = target.with_suffix(".static.onnx")
    onnx_quant.quantize_static_qdq(prepared, partial, reader, options, cache)
    dynamic = tuple(n for n in recurrent if n not in options.exclude)
    if dynamic:
        onnx_quant.quantize_dynamic_int8(partial, target, options.per_channel, options.reduce_range,
                                         op_types=onnx_quant.RECURRENT_OPS, exclude=tuple(n for n in recurrent if n in options.exclude))
    else:
        shutil.copyfile(partial, target)


def _fp32_onnxruntime(ctx: BuildContext) -> Candidate:
    return Candidate("fp32", "fp32", "onnxruntime", ctx.prepared, {"graph": "ONNX Runtime pre-processed FP32"})


def _fp32_openvino(ctx: BuildContext) -> Candidate:
    _require_openvino()
    return Candidate("fp32-openvino", "fp32", "openvino", ctx.prepared, {"graph": "the same FP32 ONNX, run by OpenVINO"})


def _static(per_channel: bool, reduce_range: bool | None) -> Callable[[BuildContext], Candidate]:
    def build(ctx: BuildContext) -> Candidate:
        if ctx.calibration is None:
            raise Unavailable("no calibration data (pass --calibration)")
        rr = ctx.kernel.reduce_range if reduce_range is None else reduce_range
        name = f"int8-static-{'per-channel' if per_channel else 'per-tensor'}" + ("" if reduce_range is None else "-full-range")
        options = onnx_quant.StaticInt8Options(per_channel=per_channel, reduce_range=rr, activation_type=ctx.kernel.activation_type,
                                               weight_type=ctx.kernel.weight_type, exclude=ctx.exclude)
        target = ctx.target(name)
        static_int8(ctx.prepared, target, ctx.calibration, ctx.spec, options, ctx.recurrent, ctx.work / "calibration-cache.json")
        return Candidate(name, "int8", "onnxruntime", target, {"method": "static", "format": "QDQ", "per_channel": per_channel,
                                                                "reduce_range": rr, "calibration": ctx.calibration.source,
                                                                "recurrent_nodes_dynamic": ctx.recurrent})
    return build


def _dynamic(per_channel: bool) -> Callable[[BuildContext], Candidate]:
    # Per-tensor is not only the coarser choice: ORT's DynamicQuantizeLSTM runs per-tensor weights
    # about 2x faster at batch 64 than per-channel ones (benchmarks/peers.py, LSTM).
    def build(ctx: BuildContext) -> Candidate:
        name = "int8-dynamic" if per_channel else "int8-dynamic-per-tensor"
        target = ctx.target(name)
        onnx_quant.quantize_dynamic_int8(ctx.prepared, target, per_channel, ctx.kernel.reduce_range, exclude=ctx.exclude)
        return Candidate(name, "int8", "onnxruntime", target, {"method": "dynamic", "per_channel": per_channel, "reduce_range": ctx.kernel.reduce_range})
    return build


def _nncf(ctx: BuildContext) -> Candidate:
    _require_openvino()
    if ctx.calibration is None:
        raise Unavailable("no calibration data (pass --calibration)")
    from aiopt.quantize.recipes.openvino import nncf_int8

    target = ctx.target("int8-nncf-openvino")
    batches = _calibration_batches(ctx)
    info = nncf_int8(ctx.prepared, target, batches, transformer=ctx.is_transformer, ignored_scope=list(ctx.exclude))
    return Candidate("int8-nncf-openvino", "int8", "openvino", Path(info.get("path", target)), {"method": "NNCF post-training INT8", **info})


def _weights_int8(ctx: BuildContext) -> Candidate:
    from aiopt.quantize.recipes.weight_only import quantize_weights_int8

    target = ctx.target("int8-weights")
    touched = quantize_weights_int8(ctx.prepared, target)
    if not touched:
        raise Unavailable("no float weights large enough to store in INT8")
    return Candidate("int8-weights", "int8-weights", "onnxruntime", target,
                     {"method": "weight-only INT8 (per output channel), folded back to float when the session loads: FP32 compute",
                      "tensors": touched})


def _calibration_batches(ctx: BuildContext, batch_size: int = 32) -> list[dict]:
    from aiopt.quantize.calibration import OrtCalibrationReader

    reader = OrtCalibrationReader(ctx.calibration, ctx.spec, batch_size)
    return list(iter(reader.get_next, None))


def _require_openvino() -> None:
    try:
        import openvino  # noqa: F401
    except ImportError as exc:
        raise Unavailable("OpenVINO is not installed (pip install 'aiopt[openvino]')") from exc


# name -> builder. Order is the order of the report.
BUILDERS: dict[str, Callable[[BuildContext], Candidate]] = {
    "fp32": _fp32_onnxruntime,
    "fp32-openvino": _fp32_openvino,
    "int8-static-per-channel": _static(True, None),
    "int8-static-per-tensor": _static(False, None),
    "int8-static-per-channel-full-range": _static(True, False),
    "int8-dynamic": _dynamic(per_channel=True),
    "int8-dynamic-per-tensor": _dynamic(per_channel=False),
    "int8-weights": _weights_int8,
    "int8-nncf-openvino": _nncf,
}


def build_all(ctx: BuildContext, names: list[str] | None = None, say=lambda message: None) -> list[Candidate]:
    """Every candidate that can be built here; the others come back with `problem` set."""
    from aiopt.errors import AioptError

    built = []
    for name in names or list(BUILDERS):
        if name == "int8-static-per-channel-full-range" and not ctx.kernel.reduce_range:
            continue  # full range is already the default on this CPU
        say(f"building {name}")
        try:
            built.append(BUILDERS[name](ctx))
        except Unavailable as exc:
            built.append(Candidate(name, "?", "?", ctx.target(name), problem=f"not built: {exc}"))
        except (AioptError, ImportError) as exc:
            built.append(Candidate(name, "?", "?", ctx.target(name), problem=f"failed: {exc}"))
        except Exception as exc:  # noqa: BLE001 -- one recipe a library cannot build must not end the others
            built.append(Candidate(name, "?", "?", ctx.target(name), problem=f"failed: {type(exc).__name__}: {str(exc)[:200]}"))
    return built
