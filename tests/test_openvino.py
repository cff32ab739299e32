"""The OpenVINO backend and NNCF INT8, on real OpenVINO, NNCF and ONNX Runtime (optional extra)."""
import json

import numpy as np
import onnx
import pytest

pytest.importorskip("openvino", reason="needs OpenVINO (pip install 'aiopt[openvino]')")
pytest.importorskip("nncf", reason="needs NNCF (pip install 'aiopt[openvino]')")

from aiopt import runtime  # noqa: E402
from aiopt.compare import compare_artifacts  # noqa: E402
from aiopt.data import load_dataset  # noqa: E402
from aiopt.errors import InputError, MissingDependencyError  # noqa: E402
from conftest import invoke_cli, with_metadata  # noqa: E402

INSTALL_LINE = "pip install 'aiopt[openvino]'"


@pytest.fixture(scope="module")
def cnn_onnx(tiny_cnn_onnx):
    return tiny_cnn_onnx


def test_runner_matches_onnxruntime_at_any_batch(cnn_onnx):
    ov_runner = runtime.load(cnn_onnx, backend="openvino", threads=2)
    ort_runner = runtime.load(cnn_onnx, backend="onnxruntime", threads=2)
    assert ov_runner.backend == "openvino" and ov_runner.output_names == ort_runner.output_names == ["logits"]
    rng = np.random.default_rng(0)
    for batch in (1, 7):
        x = rng.standard_normal((batch, 40)).astype(np.float32)
        first = ov_runner(x)["logits"]
        np.testing.assert_allclose(first, ort_runner(x)["logits"], atol=1e-4, rtol=1e-3)
    ov_runner(np.zeros((3, 40), np.float32))
    assert first.shape == (7, 10) and np.isfinite(first).all()  # the next call did not overwrite an earlier result


def test_multi_input_int64_with_dynamic_sequence(tmp_path):
    """Two int64 inputs (ids, mask) with dynamic batch and sequence axes, as a text encoder takes them."""
    from onnx import TensorProto, helper, numpy_helper

    table = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"]),
             helper.make_node("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["maskf", "axis"], ["mask3"]),
             helper.make_node("Mul", ["emb", "mask3"], ["out"])]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in ("ids", "mask")]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "seq", 8])],
                              [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([2], np.int64), "axis")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "enc.onnx"))
    runner = runtime.load(tmp_path / "enc.onnx", backend="openvino")
    for batch, seq in ((1, 5), (3, 17)):
        ids = np.arange(batch * seq, dtype=np.int64).reshape(batch, seq) % 50
        mask = np.ones((batch, seq), np.int64)
        mask[0, seq // 2:] = 0
        np.testing.assert_allclose(runner({"ids": ids, "mask": mask})["out"], table[ids] * mask[..., None], atol=1e-6)


def test_metadata_picks_openvino_and_falls_back_without_it(cnn_onnx, tmp_path, monkeypatch):
    tagged = with_metadata(cnn_onnx, tmp_path / "tagged.onnx", runtime="openvino")
    assert runtime.load(tagged).backend == "openvino"
    assert runtime.load(cnn_onnx).backend == "onnxruntime"  # untagged ONNX stays on ONNX Runtime
    monkeypatch.setitem(__import__("sys").modules, "openvino", None)  # OpenVINO absent
    assert runtime.load(tagged).backend == "onnxruntime"
    with pytest.raises(MissingDependencyError, match=r"OpenVINO is not installed; run: pip install 'aiopt\[openvino\]'"):
        runtime.load(cnn_onnx, backend="openvino")


def test_pytorch_artifact_and_cuda_refused_in_one_line(tiny_cnn, cnn_onnx):
    with pytest.raises(InputError, match="export it first") as info:
        runtime.load(tiny_cnn, backend="openvino")
    assert "\n" not in str(info.value)
    with pytest.raises(MissingDependencyError, match="runs on the CPU"):
        runtime.load(cnn_onnx, backend="openvino", device="cuda")


def test_bench_and_compare_on_openvino(cnn_onnx, tmp_path):
    result = invoke_cli("bench", str(cnn_onnx), "--backend", "openvino", "--backend", "onnxruntime", "-b", "1", "-b", "7", "--no-baseline",
                     "--warmup", "1", "--min-runs", "2", "--min-time", "0", "--rounds", "1", "--threads", "2",
                     "--json", str(tmp_path / "r.json"))
    assert result.returncode == 0, result.stderr
    records = json.loads((tmp_path / "r.json").read_text())["records"]
    assert {(r["backend"], r["batch_size"]) for r in records if not r["skipped"]} == {(b, n) for b in ("openvino", "onnxruntime") for n in (1, 7)}
    accuracy = {r["backend"]: r["accuracy"] for r in records}
    assert accuracy["openvino"] == accuracy["onnxruntime"] is not None
    compared = compare_artifacts(cnn_onnx, cnn_onnx, backend_candidate="openvino")
    assert compared["candidate"]["backend"] == "openvino" and compared["outputs"]["logits"]["top1_agreement"] == 1.0
    tagged = with_metadata(cnn_onnx, tmp_path / "tagged.onnx", runtime="openvino")
    assert compare_artifacts(cnn_onnx, tagged)["candidate"]["backend"] == "openvino"  # what `aiopt compare` does


def test_bench_without_openvino_exits_4_with_the_install_line(cnn_onnx):
    code = ("import sys; sys.modules['openvino'] = None; from aiopt.cli import main; "
            f"sys.argv = ['aiopt', 'bench', {str(cnn_onnx)!r}, '--backend', 'openvino', '--no-baseline', '-b', '1']; main()")
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 4, result.stderr
    assert INSTALL_LINE in result.stderr and "Traceback" not in result.stderr


def test_nncf_int8_runs_on_openvino_and_agrees_with_fp32(cnn_onnx, tmp_path):
    from aiopt.quantize.recipes.openvino import nncf_int8

    data = load_dataset("mnist1d")
    calibration = [{"x": data.x_train[i:i + 32].astype(np.float32)} for i in range(0, 256, 32)]
    info = nncf_int8(cnn_onnx, tmp_path / "cnn.int8.onnx", calibration)
    assert info["route"] == "nncf-onnx-qdq" and info["preset"] == "performance" and info["quantized_nodes"] > 0
    x = data.x_test[:512].astype(np.float32)
    fp32 = runtime.load(cnn_onnx, backend="openvino")(x)["logits"]
    int8 = runtime.load(tmp_path / "cnn.int8.onnx", backend="openvino")(x)["logits"]
    assert (fp32.argmax(-1) == int8.argmax(-1)).mean() >= 0.9
