"""The torch-cuda artifact (export/torch_cuda.py) and its runners (runtime/cuda_graph.py).

Everything but graph capture runs here on the CPU: export at each precision, the casting rules,
metadata, buckets and their refusals, bench fields. The CUDA parts carry the `gpu` marker.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aiopt import runtime
from aiopt.artifacts import load_model
from aiopt.errors import InputError, MissingDependencyError
from aiopt.export.torch_cuda import TorchCudaConfig, bucket_for, buckets_of, export_torch_cuda
from aiopt.reference_models.train import train_reference_model
from conftest import invoke_cli


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_export_at_each_precision_keeps_the_answers(tiny_cnn, tmp_path, precision):
    out = tmp_path / f"cnn.{precision}.pt2"
    result = export_torch_cuda(tiny_cnn, out, TorchCudaConfig(precision=precision, batch_sizes=(8, 1, 32), device="cpu"))
    assert result["batch_sizes"] == [1, 8, 32] and result["exported_on"] == "cpu"
    assert result["agreement"]["inputs"] == "test split" and result["agreement"]["top1_agreement"] >= 0.97
    assert abs(result["accuracy"] - result["parent_accuracy"]) <= 0.02
    loaded = load_model(out)
    meta = loaded.metadata
    assert meta["step"] == "export" and meta["torch_cuda"]["precision"] == precision
    assert buckets_of(meta) == (1, 8, 32)
    assert meta["agreement_with_parent"] == result["agreement"]
    assert [e["step"] for e in meta["lineage"]] == ["train", "export"]
    assert [s.shape for s in loaded.input_spec] == [("batch", 40)] and loaded.input_spec[0].dtype == "float32"


def test_reduced_precision_keeps_layer_norm_in_float32(tiny_transformer, tmp_path):
    out = tmp_path / "t.pt2"
    export_torch_cuda(tiny_transformer, out, TorchCudaConfig(precision="fp16", batch_sizes=(64,), device="cpu"))  # checked in batches of 64
    program = torch.export.load(str(out))
    norms = [n for n in program.graph.nodes if n.op == "call_function" and "layer_norm" in str(n.target)]
    linears = [n for n in program.graph.nodes if n.op == "call_function" and "linear" in str(n.target)]
    assert norms and linears
    assert {n.args[0].meta["val"].dtype for n in norms} == {torch.float32}
    assert {n.args[0].meta["val"].dtype for n in linears} == {torch.float16}
    outputs = [n for n in program.graph.nodes if n.op == "output"][0].args[0]
    assert outputs[0].meta["val"].dtype == torch.float32  # float32 at the edges


def test_runner_off_cuda_runs_eagerly_within_the_buckets(tiny_cnn, tmp_path):
    out = tmp_path / "cnn.pt2"
    export_torch_cuda(tiny_cnn, out, TorchCudaConfig(precision="bf16", batch_sizes=(1, 16), device="cpu"))
    runner = runtime.load(out)
    assert runner.backend == "torch" and runner.batch_range == (1, 16)
    x = np.random.default_rng(0).standard_normal((5, 40)).astype(np.float32)
    reference = runtime.load(tiny_cnn)(x)["logits"]
    assert (runner(x)["logits"].argmax(1) == reference.argmax(1)).mean() >= 0.8
    with pytest.raises(InputError, match=r"batch size 17 is outside .*1\.\.16.*--format torch-cuda --batch-size"):
        runner(np.zeros((17, 40), np.float32))


def test_bucket_choice():
    assert bucket_for(1, (1, 8, 256)) == 1 and bucket_for(2, (1, 8, 256)) == 8 and bucket_for(256, (1, 8, 256)) == 256
    with pytest.raises(InputError, match="above this artifact's largest bucket"):
        bucket_for(257, (1, 8, 256))


@pytest.mark.parametrize("config, match", [
    (TorchCudaConfig(precision="int8"), "unknown --precision"),
    (TorchCudaConfig(batch_sizes=(0, 4)), "at least 1"),
    (TorchCudaConfig(batch_sizes=()), "at least 1"),
])
def test_bad_configs_are_refused(tiny_cnn, tmp_path, config, match):
    with pytest.raises(InputError, match=match):
        export_torch_cuda(tiny_cnn, tmp_path / "x.pt2", config)
    assert not (tmp_path / "x.pt2").exists()


def test_bench_records_buckets_compile_time_and_peer_fields(tiny_cnn, tmp_path):
    from aiopt.measure.latency import LatencyConfig
    from aiopt.bench.measure import BenchConfig, run_bench

    out = tmp_path / "cnn.pt2"
    export_torch_cuda(tiny_cnn, out, TorchCudaConfig(precision="fp32", batch_sizes=(1, 32), device="cpu"))
    config = BenchConfig(batch_sizes=(1, 64), latency=LatencyConfig(warmup=1, min_runs=3, min_time=0.01), baseline=False)
    records = run_bench([str(out)], config)["records"]
    by_batch = {r["batch_size"]: r for r in records}
    assert by_batch[1]["skipped"] is None and by_batch[1]["accuracy"] is not None
    assert "outside the range this artifact was built for (1..32)" in by_batch[64]["skipped"]
    for record in records:
        assert "speedup_vs_peer" in record and record["speedup_vs_peer"] is None  # the peer is CUDA-only
        assert "compile_seconds" in record


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU; the row is about machines without one")
def test_export_on_cuda_without_a_gpu_exits_4(tiny_cnn, tmp_path):
    result = invoke_cli("export", str(tiny_cnn), "--format", "torch-cuda", "--device", "cuda", "-o", "x.pt2", cwd=tmp_path)
    assert result.returncode == 4, result.stderr
    assert "no CUDA GPU" in result.stderr and not (tmp_path / "x.pt2").exists()
    with pytest.raises(MissingDependencyError):
        from aiopt.runtime.cuda_graph import CudaGraphRunner

        CudaGraphRunner(torch.nn.Identity(), [], [], "cuda", (1,))


def test_cli_export_torch_cuda_json(tiny_cnn, tmp_path):
    # the largest bucket is the batch the export is checked at on the test split: 64 is 16 batches, 4 was 250
    result = invoke_cli("export", str(tiny_cnn), "--format", "torch-cuda", "--precision", "bf16", "-b", "1", "-b", "64",
                     "--device", "cpu", "-o", "m.pt2", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["precision"] == "bf16" and summary["batch_sizes"] == [1, 64] and (tmp_path / "m.pt2").is_file()


# ---------------------------------------------------------------- CUDA only

@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_graph_runner_matches_eager(tiny_cnn, tmp_path, precision):
    out = tmp_path / "cnn.pt2"
    export_torch_cuda(tiny_cnn, out, TorchCudaConfig(precision=precision, batch_sizes=(1, 8), device="cuda"))
    runner = runtime.load(out, device="cuda")
    assert runner.backend == "torch-cuda-graph" and runner.compile_seconds > 0
    eager = runtime.load(tiny_cnn)
    x = np.random.default_rng(0).standard_normal((5, 40)).astype(np.float32)  # padded up to bucket 8
    got, want = runner(x)["logits"], eager(x)["logits"]
    assert got.shape == (5, 10) and (got.argmax(1) == want.argmax(1)).all()
    assert np.abs(got - want).max() < 0.1
    with pytest.raises(InputError, match="outside the range"):
        runner(np.zeros((9, 40), np.float32))


@pytest.mark.gpu
def test_bench_on_cuda_measures_the_peer(tiny_cnn, tmp_path):
    from aiopt.measure.latency import LatencyConfig
    from aiopt.bench.measure import BenchConfig, run_bench

    out = tmp_path / "cnn.pt2"
    export_torch_cuda(tiny_cnn, out, TorchCudaConfig(precision="fp16", batch_sizes=(1, 8), device="cuda"))
    config = BenchConfig(devices=("cuda",), batch_sizes=(1, 8), latency=LatencyConfig(warmup=3, min_runs=10, min_time=0.05))
    records = run_bench([str(out)], config)["records"]
    backends = {r["backend"] for r in records}
    assert {"torch", "torch-compile-reduce-overhead", "torch-cuda-graph"} <= backends
    ours = [r for r in records if r["backend"] == "torch-cuda-graph"]
    assert all(r["speedup_vs_peer"] is not None and r["compile_seconds"] is not None for r in ours)


@pytest.mark.gpu
def test_cuda_export_loads_on_cpu(tiny_cnn, tmp_path):
    out = tmp_path / "cnn.pt2"
    export_torch_cuda(tiny_cnn, out, TorchCudaConfig(precision="fp16", batch_sizes=(1, 8), device="cuda"))
    try:
        runner = runtime.load(out, device="cpu")
    except InputError as exc:  # acceptable: one line that says why
        assert "CUDA" in str(exc)
        return
    assert runner(np.zeros((2, 40), np.float32))["logits"].shape == (2, 10)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU; the row is about machines without one")
@pytest.mark.parametrize("command", [
    ["train", "cnn:tiny", "--epochs", "1", "-o", "m.pt", "--device", "cuda"],
    ["compare", "{model}", "{model}", "--device", "cuda"],
    ["quantize", "{model}", "-o", "q.onnx", "--device", "cuda"],  # ORT here has no CUDA provider
    ["quantize", "{model}", "--backend", "torch", "-o", "q.pt", "--device", "cuda"],
])
def test_device_cuda_without_a_gpu_exits_4_everywhere(tiny_cnn, tmp_path, command):
    result = invoke_cli(*(a.format(model=tiny_cnn) for a in command), cwd=tmp_path)
    assert result.returncode == 4, result.stderr
    assert ("no CUDA GPU" in result.stderr or "not CUDAExecutionProvider" in result.stderr) and list(tmp_path.iterdir()) == []
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.gpu
def test_train_on_cuda_writes_a_cpu_checkpoint(tmp_path):
    result = train_reference_model("cnn:tiny", str(tmp_path / "m.pt"), epochs=1, device="cuda")
    assert result.metadata["training"]["device"] == "cuda"
    assert all(t.device.type == "cpu" for t in load_model(tmp_path / "m.pt").model.state_dict().values())
