"""`aiopt quantize`: real ONNX Runtime quantization of tiny trained models, checked on the files it writes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import invoke_cli

from aiopt.artifacts import METADATA_KEY, load_model
from aiopt.hardware import CpuFeatures, detect_cpu, int8_kernel_for
from aiopt.fileio import sha256_file


def _copy(src: Path, folder: Path) -> Path:
    target = folder / src.name
    target.write_bytes(src.read_bytes())
    return target


def _ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


# ---------------------------------------------------------------- CPU-aware INT8

def test_kernel_choice_follows_cpu_flags(tmp_path):
    assert int8_kernel_for(CpuFeatures("x86_64", "AMD EPYC", frozenset({"avx2", "fma"}))).reduce_range
    assert not int8_kernel_for(CpuFeatures("x86_64", "Xeon", frozenset({"avx2", "avx512f", "avx512_vnni"}))).reduce_range
    assert not int8_kernel_for(CpuFeatures("aarch64", "Neoverse", frozenset({"asimd", "asimddp"}))).reduce_range
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu sse avx avx2\n")
    cpu = detect_cpu(cpuinfo)
    assert cpu.model == "Test CPU" and "avx2" in cpu.flags and not cpu.has_vnni


def _saturating_matmul(folder: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A MatMul whose u8 x s8 products pair up beyond int16: 255*127*2 > 32767."""
    from onnx import TensorProto, helper, numpy_helper

    k, n = 64, 8
    weights = np.where(np.random.default_rng(0).random((k, n)) < 0.5, 1.0, -1.0).astype(np.float32)
    weights[:, 0] = 1.0
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="matmul")], "saturation",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])], [numpy_helper.from_array(weights, "W")],
    )
    path = folder / "matmul.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    x = np.ones((4, k), np.float32)
    return path, x, x @ weights


def _int8_error(model: Path, x: np.ndarray, expected: np.ndarray, reduce_range: bool, folder: Path) -> float:
    from aiopt.quantize.recipes import onnxruntime as onnx_quant
    from aiopt.quantize.calibration import CalibrationSet, OrtCalibrationReader
    from aiopt.runtime.onnxruntime_backend import make_session
    from aiopt.specs import TensorSpec

    spec = [TensorSpec("x", ("batch", x.shape[1]), "float32")]
    reader = OrtCalibrationReader(CalibrationSet({"x": x}, "test", None), spec)
    target = folder / f"int8-{reduce_range}.onnx"
    options = onnx_quant.StaticInt8Options(per_channel=False, reduce_range=reduce_range)
    onnx_quant.quantize_static_qdq(model, target, reader, options, folder / f"cache-{reduce_range}.json")
    return float(np.abs(make_session(str(target)).run(None, {"x": x})[0] - expected).max())


def test_the_chosen_int8_kernel_does_not_saturate_here(tmp_path):
    """On AVX2-only x86 CPUs, U8S8 without reduce_range halves this result; our choice stays exact."""
    model, x, expected = _saturating_matmul(tmp_path)
    chosen = int8_kernel_for(detect_cpu())
    assert _int8_error(model, x, expected, chosen.reduce_range, tmp_path) < 1.0
    cpu = detect_cpu()
    if cpu.is_x86 and not cpu.has_vnni:
        assert chosen.reduce_range
        assert _int8_error(model, x, expected, False, tmp_path) > 10.0, "expected vpmaddubsw saturation on a CPU without VNNI"


# ---------------------------------------------------------------- the default path

def test_forced_static_writes_int8_beside_the_input(tiny_cnn, tmp_path):
    model = _copy(tiny_cnn, tmp_path)
    result = invoke_cli("quantize", str(model), "--method", "static", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    out = tmp_path / "cnn-tiny.int8.onnx"
    assert report["path"] == str(out) and out.is_file()
    assert report["method"] == "static" and report["calibration"]["source"] == "mnist1d:train"
    assert report["fp32_accuracy"] - report["accuracy"] <= 0.03
    assert report["size_bytes"] < report["fp32_size_bytes"]
    assert report["latency"]["speedup"] > 0 and report["agreement_with_parent"]["top1_agreement"] > 0.9
    assert "QuantizeLinear" in _ops(out) and "DequantizeLinear" in _ops(out)
    loaded = load_model(out)
    meta = loaded.metadata
    assert meta["step"] == "quantize" and meta["parent"]["sha256"] == sha256_file(model)
    assert meta["quantization"]["int8_kernel"]["reduce_range"] == int8_kernel_for(detect_cpu()).reduce_range
    assert [entry["step"] for entry in meta["lineage"]] == ["train", "quantize"]
    from aiopt import runtime

    runner = runtime.load(out)
    assert runner(np.zeros((3, 40), np.float32))["logits"].shape == (3, 10)


def test_no_options_measures_every_candidate_and_writes_the_fastest_within_the_floor(tiny_cnn, tiny_cnn_onnx, tmp_path, brief_timing):
    model = _copy(tiny_cnn, tmp_path)
    result = invoke_cli("quantize", str(model), "--json", "-b", "1", "-b", "16")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    selection = report["selection"]
    by_name = {c["name"]: c for c in selection["candidates"]}
    assert {"fp32", "fp32-openvino", "int8-static-per-channel", "int8-static-per-tensor", "int8-dynamic", "int8-nncf-openvino"} <= set(by_name)
    chosen = by_name[selection["chosen"]]
    assert chosen["problem"] is None and report["metric"] == "accuracy"
    assert chosen["quality"]["accuracy_drop"] <= 0.005 + 1e-9
    # never slower than FP32 ONNX Runtime at any asked batch size, by its own measurements
    for batch in ("1", "16"):
        assert chosen["latency_ms"][batch] <= by_name["fp32"]["latency_ms"][batch] * (1 + selection["tie_tolerance"]) + 1e-9
    # every candidate that shipped quality was measured; the ones below the floor say why
    for candidate in selection["candidates"]:
        assert candidate["problem"] or candidate["quality"] is not None
    out = Path(report["path"])
    assert out.name == "cnn-tiny" + (".int8.onnx" if chosen["precision"].startswith("int8") else ".fp32.onnx")
    meta = load_model(out).metadata
    assert meta["quality_metric"] == "accuracy" and meta["selection"]["chosen"] == chosen["name"]
    from aiopt import runtime

    if chosen["runtime"] == "dispatch":  # routes by batch size: each route's runtime, the main file's last
        routes = chosen["recipe"]["dispatch"]
        assert meta["runtime"] == routes[-1]["runtime"] and runtime.load(out).backend == "+".join(r["runtime"] for r in routes)
    else:
        assert meta["runtime"] == chosen["runtime"] and runtime.load(out).backend == chosen["runtime"]
    # the human table of the measured choice: two candidates are enough to draw it (all of them were measured
    # above), from the shared ONNX export of the same model (exporting the checkpoint again proves nothing more)
    table = invoke_cli("quantize", str(tiny_cnn_onnx), "-o", str(tmp_path / "again.onnx"), "--candidate", "fp32", "--candidate", "int8-dynamic",
                       "-b", "4")
    assert table.returncode == 0, table.stderr
    assert "candidates measured here" in table.stdout and "int8-dynamic" in table.stdout and "p50 b4" in table.stdout


def test_selection_never_picks_a_candidate_slower_at_some_batch_and_prefers_the_smaller_of_a_tie(tmp_path):
    from aiopt.quantize.candidates import Candidate
    from aiopt.quantize.select import choose
    from aiopt.measure.quality import QualityFloor

    def candidate(name: str, precision: str, size: int, b1: float, b64: float) -> Candidate:
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(b"x" * size)
        return Candidate(name, precision, "onnxruntime", path, quality={"accuracy_drop": 0.0}, latency_ms={1: b1, 64: b64})

    fp32 = candidate("fp32", "fp32", 1000, 1.0, 10.0)
    wins_on_mean_only = candidate("int8-a", "int8", 300, 1.5, 3.0)  # 3x faster at 64, 1.5x slower at 1
    floor = QualityFloor("accuracy")
    assert choose([fp32, wins_on_mean_only], fp32, (1, 64), floor).chosen is fp32
    faster = candidate("int8-b", "int8", 400, 0.9, 5.0)
    tied_and_smaller = candidate("int8-c", "int8", 200, 0.91, 5.05)
    selection = choose([fp32, wins_on_mean_only, faster, tied_and_smaller], fp32, (1, 64), floor)
    assert selection.chosen is tied_and_smaller and "smaller" in selection.notes[0]
    slow_int8 = candidate("int8-d", "int8", 200, 1.2, 12.0)
    selection = choose([fp32, slow_int8], fp32, (1, 64), floor)
    assert selection.chosen is fp32 and "no reduced-precision candidate beats" in selection.verdict


def test_without_a_dataset_it_falls_back_to_dynamic_and_says_why(tiny_cnn, tmp_path, brief_timing):
    from aiopt.export.onnx import export_onnx

    exported = tmp_path / "cnn.onnx"
    export_onnx(tiny_cnn, exported)
    model = onnx.load(str(exported))
    del model.metadata_props[:]  # a colleague's ONNX file: no aiopt metadata, no dataset
    onnx.save(model, str(exported))
    result = invoke_cli("quantize", str(exported), "--backend", "onnxruntime", "--json", "-o", str(tmp_path / "out.onnx"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["method"] == "dynamic" and "no calibration data" in report["reason"]
    assert "no calibration data" in result.stderr and report["accuracy"] is None
    # chosen by measurement, the static recipes say why they were not built (one static and the
    # dynamic recipe named: measuring the rest proves nothing more here)
    result = invoke_cli("quantize", str(exported), "--json", "-o", str(tmp_path / "auto.onnx"), "-b", "1",
                        "--candidate", "int8-static-per-channel", "--candidate", "int8-dynamic")
    assert result.returncode == 0, result.stderr
    candidates = {c["name"]: c for c in json.loads(result.stdout)["selection"]["candidates"]}
    assert "no calibration data" in candidates["int8-static-per-channel"]["problem"]
    assert candidates["int8-dynamic"]["quality"] is not None


def test_lstm_nodes_get_dynamic_int8_kernels(tiny_lstm, tmp_path):
    result = invoke_cli("quantize", str(tiny_lstm), "--method", "static", "-o", str(tmp_path / "lstm.int8.onnx"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    ops = _ops(tmp_path / "lstm.int8.onnx")
    assert "DynamicQuantizeLSTM" in ops and "LSTM" not in ops
    assert report["recurrent_nodes"] and report["method"] == "static"


def test_tensorrt_target_is_symmetric_int8_qdq_around_every_matmul(tiny_cnn, tmp_path):
    out = tmp_path / "cnn.trt-int8.onnx"
    result = invoke_cli("quantize", str(tiny_cnn), "--backend", "tensorrt", "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    model = onnx.load(str(out))
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    quant_nodes = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert quant_nodes
    for node in quant_nodes:
        zero_point = initializers[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), f"{node.name}: TensorRT needs symmetric int8"
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            for name in node.input[:2]:
                assert producers[name].op_type == "DequantizeLinear", f"{node.name} input {name} is not quantized"
    assert json.loads(result.stdout)["target"] == "tensorrt-explicit-quantization"


def test_fp16_keeps_layernorm_in_float32(tiny_transformer, tmp_path):
    out = tmp_path / "t.fp16.onnx"
    result = invoke_cli("quantize", str(tiny_transformer), "--method", "fp16", "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert abs(report["fp32_accuracy"] - report["accuracy"]) <= 0.02
    model = onnx.load(str(out))
    value_types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    inits = {t.name: t.data_type for t in model.graph.initializer}
    norms = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert norms and all(inits.get(n.input[1], value_types.get(n.input[1])) == onnx.TensorProto.FLOAT for n in norms)
    assert any(t == onnx.TensorProto.FLOAT16 for t in inits.values())


def test_accuracy_budget_selection_is_consistent(tiny_transformer, tmp_path):
    result = invoke_cli("quantize", str(tiny_transformer), "--method", "static", "--max-accuracy-drop", "0", "--per-tensor", "-o", str(tmp_path / "t.onnx"), "--json")
    assert result.returncode == 0, result.stderr
    selection = json.loads(result.stdout)["layer_selection"]
    assert selection["data"] == "mnist1d:train-held-out"
    if selection["drop_all_quantized"] > 0:
        assert selection["kept_float"] and selection["steps"]
        assert selection["fits_budget"] == (selection["steps"][-1]["drop"] <= 0)
    else:
        assert selection["kept_float"] == []
    stored = json.loads({p.key: p.value for p in onnx.load(str(tmp_path / "t.onnx")).metadata_props}[METADATA_KEY])
    assert stored["quantization"]["kept_float"] == selection["kept_float"]


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        ({"x": np.zeros((10, 7), np.float32)}, "expects"),
        ({"x": np.zeros((10, 40), np.int64)}, "astype"),
        ({"x": np.zeros((0, 40), np.float32)}, "empty"),
    ],
    ids=["wrong-shape", "wrong-dtype", "empty"],
)
def test_bad_calibration_data_is_refused(tiny_cnn, tmp_path, arrays, expected):
    data = tmp_path / "calib.npz"
    np.savez(data, **arrays)
    out = tmp_path / "out.onnx"
    result = invoke_cli("quantize", str(tiny_cnn), "--calibration", str(data), "-o", str(out))
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--method", "int4"], "unknown --method"),
        (["--backend", "tensorrt", "--method", "fp16"], "static INT8 QDQ"),
        (["--calib-method", "magic"], "unknown --calib-method"),
        (["--calib-samples", "0"], "at least 1"),
        (["--max-accuracy-drop", "5"], "fraction"),
        (["--min-cosine", "2"], "--min-cosine"),
        (["--metric", "top5"], "unknown --metric"),
        (["--data", "{noisy}", "--metric", "accuracy"], "needs labels"),
        (["--backend", "openvino", "--method", "fp16"], "--backend openvino"),
    ],
)
def test_bad_options_are_refused(tiny_cnn, tmp_path, args, expected):
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, x=np.random.default_rng(0).normal(size=(16, 40)).astype(np.float32))
    args = [a.replace("{noisy}", str(unlabelled)) for a in args]
    result = invoke_cli("quantize", str(tiny_cnn), *args, "-o", str(tmp_path / "out.onnx"))
    assert result.returncode == 2 and expected in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out.onnx").exists()


def test_output_equal_to_input_is_refused_and_input_kept(tiny_cnn, tmp_path):
    from aiopt.export.onnx import export_onnx

    model = tmp_path / "m.onnx"
    export_onnx(tiny_cnn, model)
    before = sha256_file(model)
    result = invoke_cli("quantize", str(model), "-o", str(model), "--force")
    assert result.returncode == 2 and sha256_file(model) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


# ---------------------------------------------------------------- PyTorch backend

@pytest.mark.parametrize(("method", "suffix"), [("dynamic", ".int8.pt"), ("bf16", ".bf16.pt")])
def test_torch_backend_writes_torchscript_that_matches_its_parent(tiny_lstm, tmp_path, method, suffix):
    model = _copy(tiny_lstm, tmp_path)
    result = invoke_cli("quantize", str(model), "--backend", "torch", "--method", method, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    out = tmp_path / f"lstm-tiny{suffix}"
    assert report["path"] == str(out) and report["method"] == method
    assert abs(report["fp32_accuracy"] - report["accuracy"]) <= 0.02
    loaded = load_model(out)
    assert loaded.format == "torchscript" and loaded.metadata["quantization"]["method"] == method
    from aiopt import runtime

    outputs = runtime.load(out)(np.zeros((5, 40), np.float32))["logits"]
    assert outputs.shape == (5, 10) and outputs.dtype == np.float32


def test_torch_backend_refuses_static_and_onnx_inputs(tiny_cnn, tmp_path):
    result = invoke_cli("quantize", str(tiny_cnn), "--backend", "torch", "--method", "static", "-o", str(tmp_path / "x.pt"))
    assert result.returncode == 2 and "--backend onnxruntime" in result.stderr
