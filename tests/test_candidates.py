"""Pieces of quantize's choice, on real files and real runtimes: weight-only INT8 (a GRU gets INT8
weights too), the by-batch dispatch runner, and quality by what the output is."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def gru_onnx(tmp_path_factory):
    """A conv + GRU classifier exported to ONNX (a user's recurrent model: ORT has no INT8 GRU)."""
    from aiopt.specs import TensorSpec

    class ConvGRU(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv1d(1, 32, 5, padding=2)
            self.gru = torch.nn.GRU(32, 96, batch_first=True)
            self.head = torch.nn.Linear(96, 10)

        def forward(self, x):
            out, _ = self.gru(torch.relu(self.conv(x.unsqueeze(1))).transpose(1, 2))
            return self.head(out[:, -1])

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("gru") / "gru.onnx"
    torch.onnx.export(ConvGRU().eval(), (torch.randn(2, 40),), str(path), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    return path, [TensorSpec("x", ("batch", 40))]


def test_weight_only_int8_makes_a_gru_model_3x_smaller_with_float_kernels(gru_onnx, tmp_path):
    import onnx

    from aiopt.compress.weight_only import quantize_weights_int8
    from aiopt.runtime.onnxruntime_backend import OnnxRuntimeRunner

    source, spec = gru_onnx
    target = tmp_path / "gru.w8.onnx"
    touched = quantize_weights_int8(source, target)
    assert len(touched) == 2  # GRU W and R (the conv and the head are under MIN_ELEMENTS)
    assert source.stat().st_size / target.stat().st_size >= 3
    ops = [n.op_type for n in onnx.load(str(target)).graph.node]
    assert "GRU" in ops and "DequantizeLinear" not in ops  # Cast+Mul on constants: folded once at load
    x = np.random.default_rng(0).standard_normal((16, 40)).astype(np.float32)
    before = OnnxRuntimeRunner(str(source), spec)(x)["logits"]
    after = OnnxRuntimeRunner(str(target), spec)(x)["logits"]
    from aiopt.measure.quality import compare_outputs

    assert compare_outputs(before, after)["mean_cosine"] > 0.999


def test_dispatch_rule_switches_between_measured_sizes():
    from aiopt.runtime.dispatch import dispatch_rule

    rule = dispatch_rule({"onnxruntime": {1: 0.1, 64: 5.0}, "openvino": {1: 0.3, 64: 2.0}})
    assert rule == [{"max_batch": 8, "runtime": "onnxruntime"}, {"max_batch": None, "runtime": "openvino"}]
    assert dispatch_rule({"onnxruntime": {1: 0.1, 64: 1.0}, "openvino": {1: 0.3, 64: 2.0}}) == [{"max_batch": None, "runtime": "onnxruntime"}]


def test_batch_dispatch_runner_sends_each_batch_to_its_runtime(gru_onnx):
    pytest.importorskip("openvino")
    from aiopt.runtime.dispatch import BatchDispatchRunner
    from aiopt.runtime.onnxruntime_backend import OnnxRuntimeRunner
    from aiopt.runtime.openvino_backend import OpenVinoRunner

    source, spec = gru_onnx
    runners = {"onnxruntime": OnnxRuntimeRunner(str(source), spec), "openvino": OpenVinoRunner(str(source), spec)}
    runner = BatchDispatchRunner(runners, [{"max_batch": 4, "runtime": "onnxruntime"}, {"max_batch": None, "runtime": "openvino"}])
    assert runner.runtime_for(1) == "onnxruntime" and runner.runtime_for(5) == "openvino"
    for batch in (1, 9):
        x = np.random.default_rng(batch).standard_normal((batch, 40)).astype(np.float32)
        np.testing.assert_allclose(runner(x)["logits"], runners[runner.runtime_for(batch)](x)["logits"], rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match="expects"):  # one check, in Runner.__call__, as for every backend
        runner(np.zeros((2, 41), np.float32))


@pytest.mark.parametrize(("metadata", "name", "shape", "labels", "expected"), [
    ({"dataset": {"name": "mnist1d"}}, "logits", ("batch", 10), True, "accuracy"),
    ({"dataset": {"name": "mnist1d"}}, "logits", ("batch", 10), False, "agreement"),
    ({"hf": {"task": "embedding"}}, "sentence_embedding", ("batch", 384), False, "cosine"),
    ({}, "output_0", ("batch", 10), False, "cosine"),  # nothing says it is class scores
    ({}, "logits", ("batch", 10), False, "agreement"),  # the model's own output name
])
def test_the_metric_follows_what_the_output_is(metadata, name, shape, labels, expected):
    from aiopt.measure.quality import choose_metric

    assert choose_metric(metadata, name, shape, labels)[0] == expected


def test_cosine_floor_and_collapse_guard():
    from aiopt.errors import UnsupportedModelError
    from aiopt.measure.quality import QualityFloor, check_against_parent, compare_outputs

    rng = np.random.default_rng(0)
    reference = rng.standard_normal((32, 64))
    close = reference + 0.01 * rng.standard_normal((32, 64))
    quality = compare_outputs(reference, close)
    assert quality["mean_cosine"] > 0.99 and QualityFloor("cosine").problem(quality) is None
    assert "mean cosine" in QualityFloor("cosine", min_cosine=0.99999).problem(quality)
    with pytest.raises(UnsupportedModelError, match="cosine"):
        check_against_parent(reference, rng.standard_normal((32, 64)), "the candidate", "cosine")
