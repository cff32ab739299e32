"""TensorRT path: everything around the engine is tested here (prepared ONNX, profile, sidecar,
the refusals); building and running engines needs TensorRT and a GPU (marker `tensorrt`)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import invoke_cli

from aiopt.export.tensorrt import (
    TensorRTConfig,
    check_sidecar,
    make_sidecar,
    profile_shapes,
    sidecar_path,
)
from aiopt.quantize.tensorrt import prepare_onnx
from aiopt.specs import TensorSpec

SPEC = [TensorSpec("x", ("batch", 40), "float32")]
GPU = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def _initializer_types(path) -> set[int]:
    return {t.data_type for t in onnx.load(str(path)).graph.initializer}


@pytest.mark.parametrize(("precision", "dtype"), [("fp16", onnx.TensorProto.FLOAT16), ("bf16", onnx.TensorProto.BFLOAT16)])
def test_reduced_precision_onnx_carries_its_type_and_passes_the_checker(tiny_cnn, tmp_path, precision, dtype):
    from aiopt.export.onnx import check_onnx

    path, how = prepare_onnx(tiny_cnn, tmp_path, precision)
    check_onnx(path)  # full checker + strict, typed shape inference
    assert dtype in _initializer_types(path) and how["source"] == f"{precision} conversion"
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 in and out


def test_int8_uses_the_symmetric_qdq_model(tiny_cnn, tmp_path):
    path, how = prepare_onnx(tiny_cnn, tmp_path, "int8")
    assert how["source"] == "aiopt quantize --backend tensorrt"
    reused, again = prepare_onnx(path, tmp_path / "x", "int8")  # an existing TensorRT QDQ model is used as is
    assert reused == path and "QDQ model" in again["source"]


def test_an_already_quantized_onnx_is_not_converted_again(tiny_cnn, tmp_path):
    from aiopt.quantize.run import QuantizeConfig, quantize_artifact

    int8 = tmp_path / "m.int8.onnx"
    quantize_artifact(tiny_cnn, int8, QuantizeConfig(method="static"))  # the default may ship FP32: force INT8
    from aiopt.errors import InputError

    with pytest.raises(InputError, match="already quantized"):
        prepare_onnx(int8, tmp_path, "fp16")


def test_profile_spans_the_batch_range():
    shapes = profile_shapes(SPEC, TensorRTConfig(min_batch=1, opt_batch=16, max_batch=256))
    assert shapes == {"x": {"min": [1, 40], "opt": [16, 40], "max": [256, 40]}}
    from aiopt.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="seq"):
        profile_shapes([TensorSpec("ids", ("batch", "seq"), "int64")], TensorRTConfig())


def test_sidecar_mismatch_is_refused_with_how_to_rebuild(tiny_cnn, tmp_path):
    from aiopt.errors import InputError, UnsupportedModelError

    onnx_path, how = prepare_onnx(tiny_cnn, tmp_path, "fp16")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not deserialised before the sidecar is checked")
    sidecar = make_sidecar(TensorRTConfig(), onnx_path, SPEC, ["logits"], "10.13.0", GPU, how)
    sidecar_path(engine).write_text(json.dumps(sidecar))
    assert check_sidecar(engine, "10.13.0", GPU)["profile"]["x"]["max"] == [64, 40]
    with pytest.raises(UnsupportedModelError, match="TensorRT 10.13.0.*rebuild"):
        check_sidecar(engine, "11.1.0", GPU)
    with pytest.raises(UnsupportedModelError, match="sm 8.9"):
        check_sidecar(engine, "10.13.0", {"name": "NVIDIA L4", "compute_capability": "8.9"})
    sidecar_path(engine).unlink()
    with pytest.raises(InputError, match="no sidecar"):
        check_sidecar(engine, "10.13.0", GPU)


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_without_tensorrt_export_says_what_to_install_and_what_it_would_build(tiny_cnn, tmp_path):
    out = tmp_path / "m.engine"
    result = invoke_cli("export", str(tiny_cnn), "--format", "tensorrt", "--precision", "int8", "-o", str(out))
    assert result.returncode == 4, result.stderr
    assert "pip install 'aiopt[tensorrt]'" in result.stderr and "int8" in result.stderr and "batch 1..64" in result.stderr
    assert not out.exists() and not sidecar_path(out).exists()
    assert invoke_cli("export", str(tiny_cnn), "--format", "tensorrt", "--min-batch", "8", "--max-batch", "2").returncode == 2


@pytest.mark.skipif(__import__("importlib").util.find_spec("torch_tensorrt") is not None, reason="Torch-TensorRT is installed here")
def test_without_torch_tensorrt_the_second_path_says_what_to_install(tiny_cnn, tmp_path):
    out = tmp_path / "m.trt.pt2"
    result = invoke_cli("export", str(tiny_cnn), "--format", "torch-tensorrt", "-o", str(out))
    assert result.returncode == 4 and "aiopt[torch-tensorrt]" in result.stderr and "fp16" in result.stderr
    assert not out.exists()
    int8 = invoke_cli("export", str(tiny_cnn), "--format", "torch-tensorrt", "--precision", "int8", "-o", str(out))
    assert int8.returncode == 2 and "--format tensorrt" in int8.stderr


def test_an_engine_on_a_cpu_is_refused_with_one_line(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0" * 16)
    result = invoke_cli("run", str(engine), "--input", "mnist1d", "-o", str(tmp_path / "y.npz"))
    assert result.returncode == 4 and "--device cuda" in result.stderr


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_builds_runs_and_agrees_with_onnxruntime(tiny_cnn, tmp_path, precision):
    from aiopt import runtime
    from aiopt.quantize.tensorrt import export_tensorrt

    engine = tmp_path / f"m.{precision}.engine"
    cache = tmp_path / "timing.cache"
    result = export_tensorrt(tiny_cnn, engine, TensorRTConfig(precision=precision, max_batch=32, timing_cache=str(cache)))
    assert engine.is_file() and cache.is_file() and result["profile"]["x"]["max"] == [32, 40]
    runner = runtime.load(engine, device="cuda")
    x = np.random.default_rng(0).standard_normal((7, 40)).astype(np.float32)
    reference = runtime.load(tiny_cnn)(x)["logits"]
    got = runner(x)["logits"]
    assert (got.argmax(1) == reference.argmax(1)).mean() >= 0.85
    from aiopt.errors import InputError

    with pytest.raises(InputError, match="outside the range"):
        runner(np.zeros((33, 40), np.float32))
