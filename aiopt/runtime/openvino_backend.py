"""OpenVINO backend (optional extra `aiopt[openvino]`): reads an ONNX file directly (FP32, or
NNCF's QDQ INT8, which it runs with INT8 kernels) and runs it on the CPU plugin."""
from __future__ import annotations

import numpy as np

from aiopt.errors import MissingDependencyError, UnsupportedModelError
from aiopt.lazy import optional_import
from aiopt.runtime.base import Runner
from aiopt.specs import TensorSpec

INSTALL_HINT = "pip install 'aiopt[openvino]'"


def import_from_extra(module: str, label: str):
    """A module of the `aiopt[openvino]` extra (openvino, nncf); its absence names the install line."""
    return optional_import(module, label=label)


def import_openvino():
    return import_from_extra("openvino", "OpenVINO")


PRECISIONS = ("f32", "bf16")


def compile_config(threads: int | None, precision: str = "f32") -> dict:
    """Settings for CPU inference, measured on a 2-core AMD EPYC (avx512_bf16/vnni), 2 threads,
    tiny CNN/Transformer/LSTM, batch 1 and 64: PERFORMANCE_HINT=LATENCY is as fast as the default
    (within noise) and faster than THROUGHPUT, which splits the cores into streams that one
    synchronous request cannot all use (1.4-1.7x slower on the CNN and Transformer).

    INFERENCE_PRECISION_HINT=f32: on a CPU with BF16 units OpenVINO's default runs an FP32 model
    in bfloat16, which changes its outputs (3e-3 relative on all-MiniLM-L6-v2); an FP32 artifact
    is run in FP32, as every other backend runs it. INT8 artifacts still run their INT8 kernels.
    `precision="bf16"` asks for OpenVINO's bfloat16 on purpose: an artifact made by `aiopt quantize`
    says so in its metadata (serving.inference_precision) after its quality was measured that way.
    """
    if precision not in PRECISIONS:
        raise UnsupportedModelError(f"unknown OpenVINO inference precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def compile_model(model_path: str, device: str = "cpu", threads: int | None = None, precision: str = "f32"):
    """The compiled model, on the CPU plugin."""
    ov = import_openvino()
    if str(device).split(":")[0] != "cpu":
        raise MissingDependencyError(f"OpenVINO runs on the CPU here, not {device}; use --device cpu or another backend")
    core = ov.Core()
    try:
        return core.compile_model(core.read_model(str(model_path)), "CPU", compile_config(threads, precision))
    except Exception as exc:  # e.g. an op the ONNX frontend does not convert
        raise UnsupportedModelError(f"OpenVINO {ov.__version__} cannot load the model: {str(exc).strip().splitlines()[0][:300]}") from exc


class OpenVinoRunner(Runner):
    backend = "openvino"

    def __init__(self, model_path: str, input_spec: list[TensorSpec], device: str = "cpu", source: str = "", threads: int | None = None,
                 precision: str = "f32"):
        self.compiled = compile_model(model_path, device, threads, precision)
        self.precision = precision
        # One request reused across calls: creating one per call costs more than a tiny model's inference.
        self.request = self.compiled.create_infer_request()
        # The ONNX frontend keeps the graph's output order and names.
        super().__init__(input_spec, [o.get_any_name() for o in self.compiled.outputs], device, source)
        self.drop_fixed_inputs_not_in([i.get_any_name() for i in self.compiled.inputs])

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            # share_outputs=False: the request's output buffers are overwritten by the next call.
            outputs = self.request.infer(feed, share_inputs=True, share_outputs=False)
        except Exception as exc:
            raise UnsupportedModelError(f"OpenVINO failed to run the model: {str(exc).strip().splitlines()[0][:300]}") from exc
        return dict(zip(self.output_names, outputs.to_tuple()))
