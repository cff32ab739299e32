"""ONNX export validated against PyTorch, and the Runner contract, on real ONNX Runtime sessions."""
import json

import numpy as np
import onnx
import pytest
import torch

from aiopt import runtime
from aiopt.artifacts import load_model
from aiopt.compare import compare_artifacts
from aiopt.errors import CheckFailedError, InputError, UnsupportedModelError
from aiopt.export.onnx import OnnxExportConfig, export_onnx
from aiopt.specs import parse_input_shapes
from conftest import run_cli, invoke_cli


@pytest.fixture(scope="module")
def tiny_models(tiny_cnn, tiny_lstm, tiny_transformer):
    """conftest's trained checkpoints (shared with other modules), as path strings."""
    return {"cnn": str(tiny_cnn), "lstm": str(tiny_lstm), "transformer": str(tiny_transformer)}


@pytest.mark.parametrize("name", ["cnn", "lstm", "transformer"])
def test_reference_models_export_with_dynamic_batch(tiny_models, tmp_path, name):
    out = tmp_path / f"{name}.onnx"
    result = export_onnx(tiny_models[name], out)
    assert [v["stage"] for v in result.validation] == ["export", "simplified"]
    assert all(v["max_abs_diff"] < 1e-4 and v["top1_agreement"] == 1.0 for v in result.validation)
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    metadata = json.loads({p.key: p.value for p in model.metadata_props}["aiopt.json"])
    assert metadata["step"] == "export" and metadata["parent"]["path"] == tiny_models[name]
    assert [e["step"] for e in metadata["lineage"]] == ["train", "export"]
    assert metadata["metrics"]["measured_on"] == "onnxruntime"
    # The exported model runs at a batch size it never saw and agrees with PyTorch.
    x = np.random.default_rng(0).standard_normal((5, 40)).astype(np.float32)
    onnx_out = runtime.load(out)(x)["logits"]
    torch_out = runtime.load(tiny_models[name])(x)["logits"]
    np.testing.assert_allclose(onnx_out, torch_out, atol=1e-4, rtol=1e-3)
    if name == "lstm":
        assert "LSTM" in {n.op_type for n in model.graph.node}  # the fused op ONNX Runtime (and its quantizer) know


def test_static_batch(tiny_models, tmp_path):
    out = tmp_path / "static.onnx"
    export_onnx(tiny_models["cnn"], out, OnnxExportConfig(dynamic_batch=False))
    assert onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1


def test_torchscript_and_export_programs_from_users(tmp_path):
    module = torch.nn.Sequential(torch.nn.Linear(40, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    torch.jit.save(torch.jit.trace(module, torch.randn(1, 40)), str(tmp_path / "m.ts"))
    with pytest.raises(InputError, match="--input-shape"):
        export_onnx(tmp_path / "m.ts", tmp_path / "a.onnx")
    result = export_onnx(tmp_path / "m.ts", tmp_path / "a.onnx", input_spec=parse_input_shapes(["1x40"]))
    assert result.exporter == "torchscript"
    torch.export.save(torch.export.export(module, (torch.randn(2, 40),), dynamic_shapes=({0: torch.export.Dim("batch")},)), str(tmp_path / "m.pt2"))
    result = export_onnx(tmp_path / "m.pt2", tmp_path / "b.onnx")
    assert result.exporter == "dynamo" and result.accuracy is None


class BesselActivation(torch.nn.Module):
    def forward(self, x):
        return torch.special.i0(x)


class NeedsBessel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(40, 4)
        self.activation = BesselActivation()

    def forward(self, x):
        return self.activation(self.linear(x))


class DriftsAfterExport(torch.nn.Module):
    """Each call scales differently, so the traced ONNX graph cannot match later eager runs."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(40, 4)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.linear(x) * self.calls


def test_unsupported_op_names_the_op_and_module(tmp_path):
    torch.save(NeedsBessel(), tmp_path / "m.pt")
    with pytest.raises(UnsupportedModelError, match=r"bessel_i0.*activation \(BesselActivation\)"):
        export_onnx(tmp_path / "m.pt", tmp_path / "m.onnx", trust_pickle=True, input_spec=parse_input_shapes(["1x40"]))
    assert not (tmp_path / "m.onnx").exists()


def test_outputs_that_disagree_fail_and_write_nothing(tmp_path):
    torch.save(DriftsAfterExport(), tmp_path / "m.pt")
    with pytest.raises(CheckFailedError, match="disagrees with PyTorch"):
        export_onnx(tmp_path / "m.pt", tmp_path / "m.onnx", trust_pickle=True, input_spec=parse_input_shapes(["1x40"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_output_equal_to_input_is_refused(tiny_models):
    with pytest.raises(InputError, match="is the input file"):
        export_onnx(tiny_models["cnn"], tiny_models["cnn"], force=True)


@pytest.mark.parametrize("kind", ["torch", "onnx"])
def test_runner_rejects_wrong_inputs_in_one_place(tiny_models, tiny_cnn_onnx, kind):
    path = tiny_cnn_onnx if kind == "onnx" else tiny_models["cnn"]
    runner = runtime.load(path)
    with pytest.raises(InputError, match=r"shape 2 x 41; the model expects batch x 40"):
        runner(np.zeros((2, 41), np.float32))
    with pytest.raises(InputError, match=r"dtype float64; the model expects float32"):
        runner(np.zeros((2, 40)))
    with pytest.raises(InputError, match="expected x, got signal"):
        runner({"signal": np.zeros((2, 40), np.float32)})
    assert runner(torch.zeros(2, 40))["logits"].shape == (2, 10)  # torch tensors are accepted


def test_onnxruntime_runner_fast_path_matches_the_public_call(tiny_models, tmp_path):
    """The Runner calls ORT's C++ run directly on CPU (its Python wrapper re-checks what the
    Runner checked): same outputs as `InferenceSession.run`, and bad input is still refused
    by the Runner, in one line, before it reaches ORT (dict fed with a wrong shape)."""
    path = tmp_path / "m.onnx"
    export_onnx(tiny_models["transformer"], path)
    runner = runtime.load(path, backend="onnxruntime")
    feed = {runner.input_spec[0].name: np.random.default_rng(0).standard_normal((3, 40)).astype(np.float32)}
    expected = runner.session.run(None, feed)
    got = runner(feed)
    assert list(got) == runner.output_names
    for name, value in zip(runner.output_names, expected):
        np.testing.assert_array_equal(got[name], value)
    with pytest.raises(InputError, match=r"shape 3 x 39"):
        runner({runner.input_spec[0].name: np.zeros((3, 39), np.float32)})


def test_backend_mismatch_and_missing_cuda(tiny_models):
    with pytest.raises(InputError, match="export it first"):
        runtime.load(tiny_models["cnn"], backend="onnxruntime")
    if not torch.cuda.is_available():
        from aiopt.errors import MissingDependencyError

        with pytest.raises(MissingDependencyError, match="no CUDA GPU"):
            runtime.load(tiny_models["cnn"], device="cuda")


def test_compare_and_run_cli(tiny_models, tiny_cnn_onnx, tmp_path):
    onnx_path = tiny_cnn_onnx  # the session's export of the same checkpoint with the defaults (read only)
    result = compare_artifacts(tiny_models["cnn"], onnx_path)
    assert result["inputs"] == "mnist1d:test" and result["outputs"]["logits"]["top1_agreement"] == 1.0
    assert result["reference"]["accuracy"] == result["candidate"]["accuracy"]
    np.savez(tmp_path / "x.npz", x=np.zeros((3, 40), np.float32))
    ran = invoke_cli("run", str(onnx_path), "--input", "x.npz", "-o", "y.npz", "--json", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    with np.load(tmp_path / "y.npz") as outputs:
        assert outputs["logits"].shape == (3, 10)
    np.savez(tmp_path / "bad.npz", x=np.zeros((3, 41), np.float32))
    bad = invoke_cli("run", str(onnx_path), "--input", "bad.npz", "-o", "z.npz", cwd=tmp_path)
    assert bad.returncode == 2 and "expects" in bad.stderr and not (tmp_path / "z.npz").exists()


def test_export_cli_json(tiny_models, tmp_path):
    result = run_cli("export", tiny_models["cnn"], "-o", "m.onnx", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["exporter"] == "dynamo" and summary["validation"][0]["batch_sizes"] == [1, 7]
    assert load_model(tmp_path / "m.onnx").metadata["export"]["opset"] == 18
    assert "W1123" not in result.stderr and "torchvision" not in result.stderr
