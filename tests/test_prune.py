import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from aiopt.artifacts import load_model
from aiopt.compress.common import load_reference_checkpoint
from aiopt.measure.torch_model import torch_logits
from aiopt.compress.prune import PruneConfig, prune_checkpoint, two_of_four_holds
from aiopt.compress.prune_channels import _sparsity_for_target, _torch_pruning_helpers
from aiopt.data import load_dataset
from aiopt.errors import InputError, UnsupportedModelError
from aiopt.evaluate import accuracy
from aiopt.fileio import sha256_file
from aiopt.reference_models import build_model, make_config


@pytest.fixture(scope="module")
def models(tiny_cnn, tiny_lstm, tiny_transformer):
    """Tiny checkpoints of the three architectures (conftest's, shared with other modules)."""
    return {"cnn": tiny_cnn, "lstm": tiny_lstm, "transformer": tiny_transformer}


def _reloads_as_measured(result, pruned_path):
    """The written checkpoint rebuilds from its metadata config and scores exactly what the report says."""
    loaded = load_model(pruned_path)
    assert loaded.metadata["config"] == result.metadata["config"]
    assert sum(p.numel() for p in loaded.model.parameters()) == result.report["params_after"]
    data = load_dataset("mnist1d")
    assert round(accuracy(torch_logits(loaded.model, data.x_test), data.y_test), 6) == result.metadata["metrics"]["accuracy"]
    return loaded


# Settings a tiny, briefly trained parent survives (the parent-agreement guard refuses worse):
# half the channels of cnn:tiny without fine-tuning lose most of its predictions, so it loses a
# quarter and fine-tunes; the LSTM parent predicts nearly one class and keeps that unaided; the
# Transformer goes in two prune -> fine-tune rounds (the iterative path) at a low learning rate,
# which keeps its weak parent's predictions (the recipe's rate moves them: 55% agreement).
@pytest.mark.parametrize("arch, sparsity, epochs, steps, lr, widths", [
    ("cnn", 0.25, 1, 1, None, {"channels": [6, 12, 12]}),
    ("lstm", 0.5, 0, 1, None, {"hidden_size": 8}),
    ("transformer", 0.5, 2, 2, 1e-3, {"heads": 1, "mlp_dim": 16}),
])
def test_channel_pruning_shrinks_the_architecture(models, tmp_path, arch, sparsity, epochs, steps, lr, widths):
    out = tmp_path / "p.pt"
    config = PruneConfig(method="channel", sparsity=sparsity, finetune_epochs=epochs, steps=steps, lr=lr)
    result = prune_checkpoint(models[arch], out, config)
    report = result.report
    assert report["config_after"] == widths and report["config_before"] != widths
    assert report["params_after"] < report["params_before"] and report["macs_after"] < report["macs_before"]
    assert report["param_ratio"] == pytest.approx(report["params_after"] / report["params_before"], abs=1e-6)
    assert all(key in report for key in ("accuracy_before", "accuracy_after_prune", "finetune_seconds", "layers", "zero_fraction"))
    assert (report["accuracy_after_finetune"] is None) == (epochs == 0) and report["finetune_epochs"] == epochs
    assert report["finetune_lr"] == (None if epochs == 0 else lr or 3e-3)  # default: the cnn recipe's rate
    assert [s["finetune_epochs"] for s in report["steps"]] == [epochs // steps] * steps and report["steps"][-1]["config"] == widths
    assert any(layer["shape_after"] != layer["shape_before"] for layer in report["layers"])
    loaded = _reloads_as_measured(result, out)
    assert {k: loaded.metadata["config"][k] for k in widths} == widths
    meta = loaded.metadata
    assert meta["step"] == "prune" and meta["parent"]["sha256"] == sha256_file(models[arch])
    assert meta["pruning"]["method"] == "channel" and meta["params_count"] == report["params_after"]
    assert [e["step"] for e in meta["lineage"]] == ["train", "prune"]
    if arch == "transformer":  # whole heads go: head_dim stays 8, q/k/v lose a head's 8 outputs, proj its 8 inputs
        for block in loaded.model.blocks:
            assert block.attn.heads == 1 and block.attn.q.weight.shape == (8, 16) and block.attn.proj.weight.shape == (16, 8)


def test_lstm_pruner_removes_whole_hidden_units():
    """Dropping hidden units computes what the full LSTM computes once those units are disconnected
    (their weight_hh columns and classifier columns zeroed): the gate rows went with them."""
    torch.manual_seed(0)
    full = build_model("lstm", make_config("lstm:tiny", (40,), 10)).eval()
    removed = [1, 4, 5, 11]
    pruned = copy.deepcopy(full)
    lstm_pruner, _ = _torch_pruning_helpers()
    lstm_pruner.prune_out_channels(pruned.lstm, removed)
    keep = [j for j in range(16) if j not in removed]
    pruned.classifier.weight = torch.nn.Parameter(pruned.classifier.weight[:, keep])
    with torch.no_grad():
        full.lstm.weight_hh_l0[:, removed] = 0
        full.classifier.weight[:, removed] = 0
    x = torch.randn(4, 40)
    assert pruned.lstm.hidden_size == 12 and pruned.lstm.weight_hh_l0.shape == (48, 12)
    torch.testing.assert_close(pruned(x), full(x))


def test_target_params_finds_a_sparsity_that_fits(models):
    parent = load_reference_checkpoint(models["cnn"], "prune")
    sparsity, ratio = _sparsity_for_target(parent, 0.5)
    assert 0 < sparsity < 1 and ratio <= 0.5


def test_magnitude_reaches_the_requested_zero_fraction(models, tmp_path):
    out = tmp_path / "m.pt"
    result = prune_checkpoint(models["cnn"], out, PruneConfig(method="magnitude", sparsity=0.5))
    assert result.report["zero_fraction"] == pytest.approx(0.5, abs=1e-3)
    assert result.report["params_after"] == result.report["params_before"]
    loaded = _reloads_as_measured(result, out)
    assert not any(k.endswith(("_orig", "_mask")) for k in loaded.model.state_dict())  # made permanent
    assert float((loaded.model.classifier.bias == 0).float().mean()) == 0.0  # biases are never pruned


def test_magnitude_per_layer_prunes_each_layer_alike(models, tmp_path):
    result = prune_checkpoint(models["cnn"], tmp_path / "m.pt", PruneConfig(method="magnitude", sparsity=0.3, scope="layer"))
    assert all(layer["zero_fraction"] == pytest.approx(0.3, abs=0.02) for layer in result.report["layers"])


def test_two_of_four_pattern_survives_fine_tuning(models, tmp_path):
    out = tmp_path / "s.pt"
    result = prune_checkpoint(models["cnn"], out, PruneConfig(method="2:4", finetune_epochs=1))
    meta = load_model(out).metadata
    assert meta["sparsity_pattern"] == "2:4" and meta["sparse_layers"] == result.report["sparse_layers"]
    # The first conv reads 1 channel: no group of 4 to sparsify, so it is skipped and said so.
    assert result.report["skipped_layers"] == [{"name": "features.0.weight", "reason": "input dimension 1 is not a multiple of 4"}]
    state = load_model(out).model.state_dict()
    assert result.report["accuracy_after_finetune"] is not None
    for name in result.report["sparse_layers"]:
        assert two_of_four_holds(state[name]), name
        assert float((state[name] == 0).float().mean()) >= 0.5


def test_two_of_four_holds_detects_a_dense_group():
    assert two_of_four_holds(torch.tensor([[1.0, 0.0, 2.0, 0.0]]))
    assert not two_of_four_holds(torch.tensor([[1.0, 3.0, 2.0, 0.0]]))


@pytest.mark.parametrize("sparsity", [0.0, 1.0, -0.1, 1.5])
def test_sparsity_outside_0_1_is_refused(models, tmp_path, sparsity):
    with pytest.raises(InputError, match="sparsity"):
        prune_checkpoint(models["cnn"], tmp_path / "x.pt", PruneConfig(sparsity=sparsity))
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("config, match", [
    (PruneConfig(method="lottery"), "method"),
    (PruneConfig(steps=0), "steps"),
    (PruneConfig(finetune_epochs=-1), "finetune"),
    (PruneConfig(method="magnitude", target_params=0.5), "target-params"),
])
def test_bad_settings_are_refused(models, tmp_path, config, match):
    with pytest.raises(InputError, match=match):
        prune_checkpoint(models["cnn"], tmp_path / "x.pt", config)


def test_a_layer_pruned_to_nothing_is_refused(models, tmp_path):
    with pytest.raises(InputError, match="would leave no channels"):
        prune_checkpoint(models["cnn"], tmp_path / "x.pt", PruneConfig(sparsity=0.95))
    assert not (tmp_path / "x.pt").exists()


def test_output_equal_to_input_is_refused_and_input_kept(models):
    before = sha256_file(models["cnn"])
    with pytest.raises(InputError, match="is the input file"):
        prune_checkpoint(models["cnn"], models["cnn"], PruneConfig(), force=True)
    assert sha256_file(models["cnn"]) == before


def test_existing_output_needs_force(models, tmp_path):
    out = tmp_path / "exists.pt"
    out.write_bytes(b"keep me")
    with pytest.raises(InputError, match="already exists"):
        prune_checkpoint(models["cnn"], out, PruneConfig())
    assert out.read_bytes() == b"keep me"


def test_onnx_input_is_unsupported(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 40])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(np.ones((40, 10), np.float32), "w")],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(UnsupportedModelError, match="aiopt checkpoint"):
        prune_checkpoint(path, tmp_path / "p.pt", PruneConfig())
