"""`aiopt deploy --triton`: the generated config.pbtxt is parsed with Triton's own protobuf schema."""
from __future__ import annotations

import json

import pytest
from conftest import invoke_cli, with_metadata

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient is in the test extra")
from google.protobuf import text_format  # noqa: E402


@pytest.fixture(scope="module")
def onnx_model(tiny_cnn_onnx):
    return tiny_cnn_onnx


def _parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_onnx_model_repository_matches_the_model(onnx_model, tmp_path):
    repo = tmp_path / "model_repository"
    result = invoke_cli("deploy", str(onnx_model), "--triton", str(repo), "--max-batch", "32", "--instances", "2", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["platform"] == "onnxruntime_onnx"
    config = _parse(repo / "cnn" / "config.pbtxt")
    assert config.name == "cnn" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 32
    (x,) = config.input
    assert x.name == "x" and x.data_type == model_config_pb2.TYPE_FP32 and list(x.dims) == [40]
    (logits,) = config.output
    assert logits.name == "logits" and list(logits.dims) == [10] and logits.data_type == model_config_pb2.TYPE_FP32
    assert config.HasField("dynamic_batching")
    assert config.instance_group[0].count == 2 and config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert (repo / "cnn" / "1" / "model.onnx").read_bytes() == onnx_model.read_bytes()
    assert json.loads(config.parameters["aiopt_lineage"].string_value) == ["train", "export"]


def test_static_batch_model_gets_max_batch_size_zero(tiny_cnn, tmp_path):
    from aiopt.export.onnx import OnnxExportConfig, export_onnx

    static = tmp_path / "static.onnx"
    export_onnx(tiny_cnn, static, OnnxExportConfig(dynamic_batch=False))
    repo = tmp_path / "repo"
    assert invoke_cli("deploy", str(static), "--triton", str(repo), "--name", "s").returncode == 0
    config = _parse(repo / "s" / "config.pbtxt")
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [1, 40] and not config.HasField("dynamic_batching")


def test_existing_model_needs_force_and_pytorch_needs_export(onnx_model, tiny_cnn, tmp_path):
    repo = tmp_path / "repo"
    assert invoke_cli("deploy", str(onnx_model), "--triton", str(repo)).returncode == 0
    again = invoke_cli("deploy", str(onnx_model), "--triton", str(repo))
    assert again.returncode == 2 and "--force" in again.stderr
    assert invoke_cli("deploy", str(onnx_model), "--triton", str(repo), "--force", "--max-batch", "8").returncode == 0
    assert _parse(repo / "cnn" / "config.pbtxt").max_batch_size == 8
    assert sorted(p.name for p in repo.iterdir()) == ["cnn"]  # no staging or old folders left
    torch_model = invoke_cli("deploy", str(tiny_cnn), "--triton", str(repo))
    assert torch_model.returncode == 2 and "aiopt export" in torch_model.stderr


def test_artifact_measured_on_openvino_is_served_by_the_openvino_backend_as_measured(onnx_model, tmp_path):
    artifact = with_metadata(onnx_model, tmp_path / "enc.int8.onnx", runtime="openvino",
                             serving={"inference_precision": "bf16", "threads": 1, "trim_padding": True})
    repo = tmp_path / "repo"
    result = invoke_cli("deploy", str(artifact), "--triton", str(repo), "--json")
    assert result.returncode == 0, result.stderr
    notes = json.loads(result.stdout)["notes"]
    assert any("padding" in note for note in notes) and not any("FP32" in note for note in notes)
    config = _parse(repo / "enc" / "config.pbtxt")
    assert config.backend == "openvino" and not config.platform and config.default_model_filename == "model.onnx"
    assert {k: v.string_value for k, v in config.parameters.items() if k != "aiopt_lineage"} == {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": "1", "HINT_BF16": "YES"}
    served = repo / "enc" / "1" / "model.onnx"
    assert served.read_bytes() == artifact.read_bytes()
    ov = pytest.importorskip("openvino", reason="OpenVINO is the optional aiopt[openvino] extra")
    # the file and the properties the backend maps those keys to, on real OpenVINO
    compiled = ov.Core().compile_model(str(served), "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1})
    import numpy as np

    assert compiled.create_infer_request().infer({"x": np.zeros((3, 40), np.float32)})[0].shape == (3, 10)


def test_runtime_flag_overrides_the_measured_one_and_says_so(onnx_model, tmp_path):
    artifact = with_metadata(onnx_model, tmp_path / "ov.onnx", runtime="openvino", serving={"threads": 1})
    on_ort = invoke_cli("deploy", str(artifact), "--triton", str(tmp_path / "a"), "--runtime", "onnxruntime", "--json")
    assert on_ort.returncode == 0, on_ort.stderr
    assert any("measured fastest on openvino" in note for note in json.loads(on_ort.stdout)["notes"])
    config = _parse(tmp_path / "a" / "ov" / "config.pbtxt")
    assert config.platform == "onnxruntime_onnx" and config.parameters["intra_op_thread_count"].string_value == "1"
    # an FP32 file asked for on OpenVINO: no BF16 hint, and the note that Triton cannot pin FP32 there
    on_ov = invoke_cli("deploy", str(onnx_model), "--triton", str(tmp_path / "b"), "--runtime", "openvino", "--json")
    assert on_ov.returncode == 0, on_ov.stderr
    assert any("cannot pin FP32" in note for note in json.loads(on_ov.stdout)["notes"])
    config = _parse(tmp_path / "b" / "cnn" / "config.pbtxt")
    assert config.backend == "openvino" and "HINT_BF16" not in config.parameters
    wrong = invoke_cli("deploy", str(onnx_model), "--triton", str(tmp_path / "c"), "--runtime", "tensorflow")
    assert wrong.returncode == 2 and "--runtime" in wrong.stderr and not (tmp_path / "c").exists()
