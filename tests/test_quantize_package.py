"""The quantize package's seams (issue 24): candidates run through the one runner factory, a forced
recipe is a registry entry, and export/ builds TensorRT INT8 only from a QDQ model (quantizing is
composed above it, in quantize/tensorrt.py)."""
from __future__ import annotations

import numpy as np
import pytest

from aiopt.errors import InputError
from aiopt.export import tensorrt
from aiopt.quantize.candidates import Candidate
from aiopt.quantize.registry import BUILDERS, FORCED_ONLY, MEASURED, forced_recipe
from aiopt.quantize.select import make_runner
from aiopt.runtime.dispatch import BatchDispatchRunner
from aiopt.runtime.onnxruntime_backend import OnnxRuntimeRunner
from aiopt.specs import TensorSpec

SPEC = [TensorSpec("x", ("batch", 8))]


def test_a_candidate_runs_on_the_runner_runtime_for_makes(linear_onnx):
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    expected = OnnxRuntimeRunner(str(linear_onnx), SPEC)(x)["logits"]
    plain = make_runner(Candidate("fp32", "fp32", "onnxruntime", linear_onnx, serving={"threads": 1}), SPEC)
    assert plain.backend == "onnxruntime" and plain.source == str(linear_onnx)
    np.testing.assert_allclose(plain(x)["logits"], expected, rtol=1e-6)
    routes = [{"max_batch": 4, "candidate": "small", "runtime": "onnxruntime", "path": str(linear_onnx), "serving": {"threads": 1}},
              {"max_batch": None, "candidate": "large", "runtime": "onnxruntime", "path": str(linear_onnx), "serving": {}}]
    routed = make_runner(Candidate("by-batch", "fp32", "dispatch", linear_onnx, {"dispatch": routes}), SPEC)
    assert isinstance(routed, BatchDispatchRunner) and [m for m, _ in routed.routes] == [4, None]
    np.testing.assert_allclose(routed(x)["logits"], expected, rtol=1e-6)  # batch 5: the second route
    np.testing.assert_allclose(routed(x[:2])["logits"], expected[:2], rtol=1e-6)


@pytest.mark.parametrize("method", ["fp16", "dynamic", "static"])
@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt"])
@pytest.mark.parametrize("per_channel", [True, False])
def test_every_forced_recipe_is_one_registry_entry(method, backend, per_channel):
    name = forced_recipe(method, backend, per_channel)
    assert name in BUILDERS
    # the TensorRT and FP16 recipes are built only when forced; the measured choice weighs the others
    assert (name in MEASURED) == (name not in FORCED_ONLY)
    assert (name in FORCED_ONLY) == (method == "fp16" or (method == "static" and backend == "tensorrt"))


def test_export_alone_builds_int8_only_from_the_qdq_model(linear_onnx, tmp_path):
    with pytest.raises(InputError, match="aiopt quantize --backend tensorrt"):
        tensorrt.prepare_onnx(linear_onnx, tmp_path, "int8")
