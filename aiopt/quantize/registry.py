"""The one registry of quantization recipes: name -> builder (BuildContext -> Candidate), each
builder in its runtime's module under recipes/. Adding a recipe is one entry. The measured choice
builds every allowed entry of MEASURED (the names --candidate accepts); a forced recipe builds its
one entry (forced_recipe) through the same builder.
"""
from __future__ import annotations

from collections.abc import Callable

from aiopt.errors import AioptError
from aiopt.quantize.candidates import BuildContext, Candidate, Unavailable
from aiopt.quantize.recipes import onnxruntime, openvino, weight_only

# name -> builder. Order is the order of the report.
BUILDERS: dict[str, Callable[[BuildContext], Candidate]] = {
    "fp32": onnxruntime.fp32,
    "fp32-openvino": openvino.fp32,
    "int8-static-per-channel": onnxruntime.static(True, None),
    "int8-static-per-tensor": onnxruntime.static(False, None),
    "int8-static-per-channel-full-range": onnxruntime.static(True, False),
    "int8-dynamic": onnxruntime.dynamic(per_channel=True),
    "int8-dynamic-per-tensor": onnxruntime.dynamic(per_channel=False),
    "int8-weights": weight_only.weights_int8,
    "int8-nncf-openvino": openvino.nncf,
    # built only when a forced --method/--backend names them (forced_recipe); the measured choice weighs the others
    "fp16": onnxruntime.fp16,
    "int8-static-tensorrt": onnxruntime.tensorrt_static(per_channel=True),
    "int8-static-tensorrt-per-tensor": onnxruntime.tensorrt_static(per_channel=False),
}
FORCED_ONLY = ("fp16", "int8-static-tensorrt", "int8-static-tensorrt-per-tensor")
# What the measured choice builds (and --candidate accepts), in the order of the report.
MEASURED = tuple(name for name in BUILDERS if name not in FORCED_ONLY)


def forced_recipe(method: str, backend: str, per_channel: bool) -> str:
    """The registry entry a forced recipe builds: --method fp16|dynamic|static on ONNX Runtime, or
    static for --backend tensorrt; --per-tensor picks the per-tensor variant."""
    if method == "fp16":
        return "fp16"
    if method == "dynamic":
        return "int8-dynamic" if per_channel else "int8-dynamic-per-tensor"
    if backend == "tensorrt":
        return "int8-static-tensorrt" if per_channel else "int8-static-tensorrt-per-tensor"
    return "int8-static-per-channel" if per_channel else "int8-static-per-tensor"


def build_all(ctx: BuildContext, names: list[str] | None = None, say=lambda message: None) -> list[Candidate]:
    """Every candidate that can be built here; the others come back with `problem` set."""
    built = []
    for name in names or list(MEASURED):
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
