"""What a quantization recipe builds: a Candidate (a real file made from the pre-processed FP32
graph, paired with the runtime it ships for) from a BuildContext. The recipes live in recipes/,
one module per runtime, and are named in the one registry (registry.py); a builder that needs
what is absent here raises Unavailable with the reason, and the selection (select.py) measures the rest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aiopt.artifacts import FORMAT_ONNX, LoadedModel

# Recurrent cells: ONNX Runtime's static QDQ path does not speed them up on CPU, its dynamic INT8
# kernels (DynamicQuantizeLSTM) do.
RECURRENT_OPS = ("LSTM", "GRU")


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

    def as_loaded(self, spec, outputs=None) -> LoadedModel:
        """The candidate described as a loaded ONNX artifact (its serving settings, by-batch routes
        and outputs in the metadata), for `runtime.runner_for`: the Runner it would ship with."""
        metadata = {"serving": dict(self.serving), **({"dispatch": self.recipe["dispatch"]} if self.runtime == "dispatch" else {}),
                    **({"outputs": [o.to_dict() for o in outputs]} if outputs else {})}
        return LoadedModel(Path(self.path), FORMAT_ONNX, None, metadata, list(spec))

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
    kernel: object  # hardware.Int8KernelChoice
    nodes: list[tuple[str, str]]
    exclude: tuple[str, ...] = ()
    outputs: list = field(default_factory=list)  # output specs of the FP32 graph
    calib_method: str = "minmax"  # static recipes: ONNX Runtime's calibration method (--calib-method)
    calibration_providers: tuple[str, ...] = ()  # where calibration runs (empty: ONNX Runtime's CPU)

    @property
    def recurrent(self) -> list[str]:
        return [name for name, op in self.nodes if op in RECURRENT_OPS]

    @property
    def is_transformer(self) -> bool:
        return any(op in ("Softmax", "Attention", "MultiHeadAttention") for _, op in self.nodes)

    def target(self, name: str) -> Path:
        return self.work / f"{name}.onnx"


class Unavailable(Exception):
    """A builder cannot make its candidate here (the message says why)."""
