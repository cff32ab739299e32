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

    from aiopt.quantize.recipes.weight_only import quantize_weights_int8
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


def test_batch_dispatch_runner_sends_each_batch_to_its_route(gru_onnx):
    pytest.importorskip("openvino")
    from aiopt.runtime.dispatch import BatchDispatchRunner
    from aiopt.runtime.onnxruntime_backend import OnnxRuntimeRunner
    from aiopt.runtime.openvino_backend import OpenVinoRunner

    source, spec = gru_onnx
    small, large = OnnxRuntimeRunner(str(source), spec), OpenVinoRunner(str(source), spec)
    runner = BatchDispatchRunner([(4, small), (None, large)])
    assert runner.runner_for(1) is small and runner.runner_for(5) is large
    assert runner.backend == "onnxruntime+openvino"
    for batch in (1, 9):
        x = np.random.default_rng(batch).standard_normal((batch, 40)).astype(np.float32)
        np.testing.assert_allclose(runner(x)["logits"], runner.runner_for(batch)(x)["logits"], rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match="expects"):  # one check, in Runner.__call__, as for every backend
        runner(np.zeros((2, 41), np.float32))


def test_by_batch_artifact_serves_small_batches_from_a_companion_file(gru_onnx, tmp_path):
    """Two graphs, each fastest at one batch size: one artifact (main file + companion), routed
    by batch size when loaded, copied together, refused when the companion is missing or altered."""
    from aiopt import runtime
    from aiopt.artifacts import artifact_files, artifact_size, copy_artifact, load_model
    from aiopt.quantize.recipes import onnxruntime as onnx_quant
    from aiopt.quantize.write import write_chosen as _write_chosen
    from aiopt.quantize.candidates import Candidate
    from aiopt.quantize.select import by_batch
    from aiopt.errors import InputError
    from aiopt.measure.quality import QualityFloor
    from aiopt.runtime.onnxruntime_backend import OnnxRuntimeRunner

    source, spec = gru_onnx
    dynamic = tmp_path / "dynamic.onnx"
    onnx_quant.quantize_dynamic_int8(source, dynamic, False, False)
    quality = {"mean_cosine": 0.999, "min_cosine": 0.99, "finite": True}
    fp32 = Candidate("fp32", "fp32", "onnxruntime", source, quality=quality, latency_ms={1: 0.1, 64: 5.0})
    int8 = Candidate("int8-dynamic", "int8", "onnxruntime", dynamic, quality=quality, latency_ms={1: 0.3, 64: 2.0})
    (routed,) = by_batch([fp32, int8], (1, 64), QualityFloor("cosine"))
    assert routed.latency_ms == {1: 0.1, 64: 2.0} and routed.precision == "int8"
    assert routed.size_bytes == source.stat().st_size + dynamic.stat().st_size
    assert by_batch([fp32, Candidate("slow", "int8", "onnxruntime", dynamic, quality=quality, latency_ms={1: 0.2, 64: 6.0})],
                    (1, 64), QualityFloor("cosine")) == []  # one candidate fastest everywhere: nothing to route

    out = tmp_path / "served" / "model.int8.onnx"
    out.parent.mkdir()
    report = {"quality": quality, "metric": "cosine", "recipe": routed.recipe, "selection": {"candidates": []}}
    _write_chosen(routed, out, load_model(source), spec, report, (source,), force=False)
    companion = out.with_name("model.int8.upto-b8.onnx")
    assert artifact_files(out) == [out, companion] and artifact_size(out) == out.stat().st_size + companion.stat().st_size
    meta = load_model(out).metadata
    assert [r.get("file") for r in meta["dispatch"]] == ["model.int8.upto-b8.onnx", None]
    assert "path" not in str(meta["dispatch"]) and load_model(companion).metadata["companion_of"] == out.name

    runner = runtime.load(out)
    for batch, expected in ((1, source), (9, dynamic)):  # each batch size on its own graph
        x = np.random.default_rng(batch).standard_normal((batch, 40)).astype(np.float32)
        np.testing.assert_allclose(runner(x)["logits"], OnnxRuntimeRunner(str(expected), spec)(x)["logits"], rtol=1e-5, atol=1e-6)
    from aiopt.export.triton import deploy_triton

    notes = deploy_triton(out, tmp_path / "repository")["notes"]  # Triton loads the main file only, and says so
    assert "batches up to 8 on onnxruntime from model.int8.upto-b8.onnx" in notes[0]
    moved = tmp_path / "elsewhere" / "renamed.onnx"
    moved.parent.mkdir()
    copy_artifact(out, moved)
    assert runtime.load(moved)(np.zeros((1, 40), np.float32))["logits"].shape == (1, 10)
    companion.write_bytes(dynamic.read_bytes())
    with pytest.raises(InputError, match="sha256 differs"):
        runtime.load(out)
    companion.unlink()
    with pytest.raises(InputError, match="not beside it"):
        runtime.load(out)
    assert runtime.load(out, backend="onnxruntime").backend == "onnxruntime"  # the main file alone still runs

    # two routes on one graph (one thread at batch 1, two at 8): one companion file, named by both
    one_thread = Candidate("fp32+1-thread", "fp32", "onnxruntime", source, quality=quality, latency_ms={1: 0.05, 8: 0.9, 64: 5.0},
                           serving={"threads": 1})
    fp32.latency_ms = {1: 0.1, 8: 0.5, 64: 5.0}
    int8.latency_ms = {1: 0.3, 8: 0.8, 64: 2.0}
    (three,) = by_batch([one_thread, fp32, int8], (1, 8, 64), QualityFloor("cosine"))
    shared = tmp_path / "shared" / "model.int8.onnx"
    shared.parent.mkdir()
    report = {"quality": quality, "metric": "cosine", "recipe": three.recipe, "selection": {"candidates": []}}
    _write_chosen(three, shared, load_model(source), spec, report, (source,), force=False)
    routes = load_model(shared).metadata["dispatch"]
    assert [r["max_batch"] for r in routes] == [2, 22, None] and routes[0]["file"] == routes[1]["file"] == "model.int8.upto-b2.onnx"
    assert sorted(p.name for p in shared.parent.iterdir()) == ["model.int8.onnx", "model.int8.upto-b2.onnx"]
    assert runtime.load(shared).runner_for(1).source.endswith("model.int8.upto-b2.onnx")


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


def test_sensitive_layers_are_ranked_by_ort_qdq_debugger(gru_onnx, tmp_path):
    """Mixed precision's ranking: ORT's QDQ debugger (it iterates over the reader) on real files."""
    from aiopt.quantize.recipes import onnxruntime as onnx_quant
    from aiopt.quantize.calibration import CalibrationSet, OrtCalibrationReader
    from aiopt.quantize.sensitivity import rank_sensitive_nodes

    source, spec = gru_onnx
    calibration = CalibrationSet({"x": np.random.default_rng(0).standard_normal((64, 40)).astype(np.float32)}, "random", None)
    qdq = tmp_path / "qdq.onnx"
    onnx_quant.quantize_static_qdq(source, qdq, OrtCalibrationReader(calibration, spec), onnx_quant.StaticInt8Options(), tmp_path / "cache.json")
    ranked = rank_sensitive_nodes(source, qdq, OrtCalibrationReader(calibration, spec), tmp_path)
    assert ranked and all(isinstance(name, str) and isinstance(sqnr, float) for name, sqnr in ranked)
    assert [s for _, s in ranked] == sorted(s for _, s in ranked)  # most sensitive (lowest SQNR) first


def test_dispatch_rule_keeps_one_file_when_the_other_wins_only_by_noise():
    from aiopt.runtime.dispatch import dispatch_rule

    latency = {"dynamic+1-thread": {1: 0.06, 64: 3.0}, "dynamic": {1: 0.09, 64: 1.40}, "static@openvino": {1: 0.30, 64: 1.37}}
    group = {"dynamic+1-thread": "a.onnx", "dynamic": "a.onnx", "static@openvino": "b.onnx"}
    # 2% apart at batch 64: within a 3% tie the file batch 1 already runs serves batch 64 too
    assert dispatch_rule(latency, key="candidate", tie=0.03, group=group) == [
        {"max_batch": 8, "candidate": "dynamic+1-thread"}, {"max_batch": None, "candidate": "dynamic"}]
    # 10% apart is a real difference: the second file ships
    latency["static@openvino"][64] = 1.26
    assert dispatch_rule(latency, key="candidate", tie=0.03, group=group)[-1] == {"max_batch": None, "candidate": "static@openvino"}
    assert dispatch_rule(latency, key="candidate")[-1] == {"max_batch": None, "candidate": "static@openvino"}


def test_by_batch_within_noise_ships_one_file_and_reports_the_route_it_takes(gru_onnx, tmp_path):
    from aiopt.quantize.candidates import Candidate
    from aiopt.quantize.select import by_batch
    from aiopt.measure.quality import QualityFloor

    source, _ = gru_onnx
    other = tmp_path / "other.onnx"
    other.write_bytes(source.read_bytes())
    quality = {"mean_cosine": 0.999, "min_cosine": 0.99, "finite": True}
    one_thread = Candidate("a+1-thread", "int8", "onnxruntime", source, quality=quality, latency_ms={1: 0.06, 64: 3.0}, serving={"threads": 1})
    two_threads = Candidate("a", "int8", "onnxruntime", source, quality=quality, latency_ms={1: 0.09, 64: 1.40})
    elsewhere = Candidate("b@openvino", "int8", "openvino", other, quality=quality, latency_ms={1: 0.30, 64: 1.37})
    (routed,) = by_batch([one_thread, two_threads, elsewhere], (1, 64), QualityFloor("cosine"))
    assert [r["candidate"] for r in routed.recipe["dispatch"]] == ["a+1-thread", "a"] and routed.files == [source]
    assert routed.latency_ms == {1: 0.06, 64: 1.40}  # what its routes take, not the fastest of all
