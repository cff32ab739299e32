"""One runner factory (issue 24): the quantize package, forced recipe and measured choice alike,
builds its Runners through `aiopt.runtime.runner_for`, not a backend's Runner class directly
(one exception, named below with its reason)."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

import aiopt.runtime as runtime
from aiopt.quantize.prepare import ort_runner
from aiopt.specs import TensorSpec

QUANTIZE = Path(runtime.__file__).resolve().parent.parent / "quantize"
RUNNER_CLASSES = {"OnnxRuntimeRunner", "OpenVinoRunner", "TorchRunner", "TensorRTRunner", "CudaGraphRunner"}
SPEC = [TensorSpec("x", ("batch", 8))]
# --backend torch times the parent module and its reduced-precision copy in memory, eagerly, as
# before; runner_for would run a torch-cuda parent as CUDA graphs (its buckets): not the same measurement.
ALLOWED = {("quantize/forced_torch.py", "TorchRunner")}


def test_no_module_of_the_quantize_package_builds_a_backend_runner_itself():
    built = []
    for path in sorted(QUANTIZE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
                if name in RUNNER_CLASSES and (str(path.relative_to(QUANTIZE.parent)), name) not in ALLOWED:
                    built.append(f"{path.relative_to(QUANTIZE.parent)}:{node.lineno} {name}")
    assert not built, f"build these through aiopt.runtime.runner_for: {built}"


def test_a_work_graph_runs_on_onnx_runtime_through_the_factory(linear_onnx):
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    expected = onnxruntime.InferenceSession(str(linear_onnx), providers=["CPUExecutionProvider"]).run(["logits"], {"x": x})[0]
    runner = ort_runner(linear_onnx, SPEC)
    assert runner.backend == "onnxruntime" and runner.device == "cpu" and runner.source == str(linear_onnx)
    np.testing.assert_allclose(runner(x)["logits"], expected, rtol=1e-6)
    with pytest.raises(Exception, match="batch|shape|x"):  # the Runner contract's one check of the inputs, before ONNX Runtime
        runner(np.zeros((5, 7), np.float32))
