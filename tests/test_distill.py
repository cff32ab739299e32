import dataclasses
import hashlib
import json

import pytest
import torch
import torch.nn.functional as F

from aiopt.artifacts import load_model
from aiopt.compress.distill import (
    DistillConfig,
    distill_checkpoint,
    distillation_loss,
    kd_loss,
    scale_config,
)
from aiopt.data import load_dataset
from aiopt.errors import InputError
from aiopt.reference_models import build_model, make_config
from aiopt.reference_models.train import (
    TrainConfig,
    set_seed,
    train_model,
    train_reference_model,
)

@pytest.fixture(scope="module")
def teacher(tiny_cnn):
    """The session's cnn:tiny (3 epochs, about 66% accurate): enough for a student to learn to agree
    with it; a teacher of its own, trained 10 epochs, cost about 50 CPU seconds and proved nothing more."""
    return tiny_cnn


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _state_equal(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- the loss and the training hook

def test_kd_loss_with_alpha_zero_is_the_recipe_cross_entropy():
    torch.manual_seed(0)
    student, teacher, labels = torch.randn(16, 10), torch.randn(16, 10), torch.randint(0, 10, (16,))
    plain = F.cross_entropy(student, labels, label_smoothing=0.05)
    assert torch.equal(kd_loss(student, teacher, labels, temperature=4.0, alpha=0.0, label_smoothing=0.05), plain)


def test_kd_loss_is_hintons_formula():
    torch.manual_seed(1)
    student, teacher, labels = torch.randn(16, 10), torch.randn(16, 10), torch.randint(0, 10, (16,))
    t, alpha = 3.0, 0.6
    p_teacher = F.softmax(teacher / t, dim=1)
    kl = (p_teacher * (p_teacher.log() - F.log_softmax(student / t, dim=1))).sum(1).mean()
    expected = alpha * t * t * kl + (1 - alpha) * F.cross_entropy(student, labels)
    assert torch.allclose(kd_loss(student, teacher, labels, t, alpha, label_smoothing=0.0), expected, atol=1e-6)
    # A student that already matches the teacher gets no soft-target loss.
    assert float(kd_loss(teacher, teacher, labels, t, 1.0, 0.0)) == pytest.approx(0.0, abs=1e-6)


def _tiny_cnn(data, seed=0):
    set_seed(seed)
    return build_model("cnn", make_config("cnn:tiny", data.sample_shape, data.num_classes))


def test_default_loss_fn_trains_exactly_as_before():
    full = load_dataset("mnist1d")  # a slice of the training split: bit-equal weights after a few steps prove the same
    data = dataclasses.replace(full, x_train=full.x_train[:1280], y_train=full.y_train[:1280])  # 10 steps (OneCycleLR needs a few)
    config = TrainConfig(epochs=1, seed=3)
    plain, hooked = _tiny_cnn(data), _tiny_cnn(data)
    train_model(plain, data, config)
    train_model(hooked, data, config, loss_fn=lambda logits, labels, inputs: F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing))
    assert _state_equal(plain.state_dict(), hooked.state_dict())


def test_teacher_sees_the_students_shifted_batch():
    data = load_dataset("mnist1d")
    student, teacher = _tiny_cnn(data, seed=0), _tiny_cnn(data, seed=1)
    seen_by_student, seen_by_teacher = [], []
    student.register_forward_pre_hook(lambda module, args: seen_by_student.append(args[0]))
    teacher.register_forward_pre_hook(lambda module, args: seen_by_teacher.append(args[0]))
    loss_fn = distillation_loss(teacher, temperature=4.0, alpha=0.7, label_smoothing=0.05)
    train_model(student, data, TrainConfig(epochs=1, batch_size=1000, max_shift=3, seed=0), loss_fn=loss_fn)
    assert len(seen_by_teacher) == len(seen_by_student) == 4
    assert all(torch.equal(s, t) for s, t in zip(seen_by_student, seen_by_teacher))
    # The batches really are shifted: not all rows are rows of the training set as stored.
    rows = {tuple(r) for r in torch.from_numpy(data.x_train).numpy().round(5).tolist()}
    assert sum(tuple(r) not in rows for r in seen_by_teacher[0].numpy().round(5).tolist()) > 500
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())


# ---------------------------------------------------------------- width scaling

def test_scale_config_narrows_every_architecture():
    cnn = scale_config("cnn", make_config("cnn", (40,), 10), 0.5)
    assert cnn.channels == (16, 32, 32, 32)
    assert scale_config("lstm", make_config("lstm", (40,), 10), 0.5).hidden_size == 64
    tf = scale_config("transformer", make_config("transformer", (40,), 10), 0.5)
    assert (tf.dim, tf.heads, tf.head_dim, tf.mlp_dim) == (48, 2, 24, 96)
    one_head = scale_config("transformer", make_config("transformer", (40,), 10), 0.1)
    assert (one_head.dim, one_head.heads, one_head.head_dim, one_head.mlp_dim) == (10, 1, 10, 19)
    assert scale_config("cnn", make_config("cnn:tiny", (40,), 10), 0.01).channels == (1, 1, 1)
    for name in ("cnn", "lstm", "transformer"):  # every narrowed config builds and runs
        config = scale_config(name, make_config(name, (40,), 10), 0.3)
        assert build_model(name, config)(torch.zeros(2, 40)).shape == (2, 10)


# ---------------------------------------------------------------- end to end

@pytest.mark.slow  # end to end: the student distilled 3 epochs, then trained 3 alone for the baseline; distill_checkpoint's path is in the fast tests below
def test_distill_by_width_writes_a_smaller_student_with_lineage(teacher, tmp_path):
    out = tmp_path / "student.pt"
    result = distill_checkpoint(teacher, out, DistillConfig(width=0.5, epochs=3))
    report = result.report
    assert json.loads(json.dumps(report)) == report
    for key in ("teacher_accuracy", "student_accuracy", "student_alone_accuracy", "teacher_params", "student_params",
                "param_ratio", "temperature", "alpha", "epochs", "train_seconds", "student_alone_seconds", "student"):
        assert key in report
    assert report["student_params"] < report["teacher_params"] and 0 < report["param_ratio"] < 0.5
    assert 0.1 < report["student_accuracy"] <= 1 and 0.1 < report["student_alone_accuracy"] <= 1
    assert report["epochs"] == 3  # the CNN student's measured defaults:
    assert (report["temperature"], report["alpha"], report["feature_weight"]) == (2.0, 0.5, 0.0)
    assert report["student"]["architecture"] == "cnn" and report["student"]["config"]["channels"] == [4, 8, 8]

    loaded = load_model(out)
    assert type(loaded.model).__name__ == "CNN" and loaded.model.config.channels == (4, 8, 8)
    assert sum(p.numel() for p in loaded.model.parameters()) == report["student_params"] == loaded.metadata["params_count"]
    meta = loaded.metadata
    assert meta["step"] == "distill" and meta["config"]["channels"] == [4, 8, 8]
    assert meta["parent"]["path"] == str(teacher) and meta["parent"]["sha256"] == _sha(teacher)
    assert [e["step"] for e in meta["lineage"]] == ["train", "distill"] and meta["lineage"][0]["artifact"] == str(teacher)
    assert meta["metrics"]["accuracy"] == report["student_accuracy"] and meta["metrics"]["split"] == "test"
    assert meta["agreement_with_parent"]["finite"] and meta["agreement_with_parent"]["top1_agreement"] >= 0.5
    assert meta["inputs"] == [{"name": "x", "shape": ["batch", 40], "dtype": "float32"}]
    assert meta["distillation"]["student_accuracy"] == report["student_accuracy"]


def test_distill_into_a_registry_student_without_baseline(teacher, tmp_path):
    out = tmp_path / "student.pt"
    result = distill_checkpoint(teacher, out, DistillConfig(student="cnn:tiny", epochs=2, temperature=3.0, alpha=0.6, compare_alone=False))
    assert result.report["student_alone_accuracy"] is None and result.report["student_alone_seconds"] is None
    assert result.report["student"]["spec"] == "cnn:tiny" and result.metadata["size"] == "tiny"
    assert result.metadata["training"]["temperature"] == 3.0 and result.metadata["training"]["epochs"] == 2


def test_alpha_zero_is_the_student_trained_alone(tmp_path):
    # equal at any length and on any data: a teacher of its own on digits (1,347 rows of 8 x 8; 95% after 4 epochs),
    # whose epochs cost a tenth of MNIST-1D's, instead of twice two epochs of the student on MNIST-1D (12 to 27 CPU s)
    teacher = train_reference_model("cnn:tiny", str(tmp_path / "t.pt"), dataset="digits", epochs=4, seed=0).path
    result = distill_checkpoint(teacher, tmp_path / "s.pt", DistillConfig(student="cnn:tiny", epochs=2, alpha=0.0))
    assert result.report["student_accuracy"] == result.report["student_alone_accuracy"]


def test_student_checkpoint_is_the_starting_point(teacher, tmp_path):
    result = distill_checkpoint(teacher, tmp_path / "s.pt", DistillConfig(student=str(teacher), epochs=1, compare_alone=False))
    assert result.report["student"]["checkpoint"] == str(teacher)
    assert result.report["student"]["sha256"] == _sha(teacher)
    # Started from the teacher's own weights, one more epoch keeps it close to the teacher.
    assert result.report["agreement_with_parent"]["top1_agreement"] > 0.8


# ---------------------------------------------------------------- refusals, all before training

@pytest.mark.parametrize(("config", "match"), [
    (DistillConfig(), "exactly one of --student"),
    (DistillConfig(student="cnn:tiny", width=0.5), "exactly one of --student"),
    (DistillConfig(width=0.0), "--width must be in"),
    (DistillConfig(width=1.5), "--width must be in"),
    (DistillConfig(width=0.5, temperature=0.0), "--temperature must be greater than 0"),
    (DistillConfig(width=0.5, alpha=1.5), "--alpha must be between 0 and 1"),
    (DistillConfig(width=0.5, epochs=0), "--epochs must be at least 1"),
    (DistillConfig(student="resnet:tiny"), "neither a model"),
    (DistillConfig(student="missing.pt"), "neither a model"),
])
def test_bad_configs_are_refused(tiny_cnn, tmp_path, config, match):
    with pytest.raises(InputError, match=match):
        distill_checkpoint(tiny_cnn, tmp_path / "s.pt", config)
    assert not (tmp_path / "s.pt").exists()


def test_student_that_cannot_take_the_teachers_input(tiny_cnn, tmp_path):
    digits = tmp_path / "digits.pt"
    train_reference_model("cnn:tiny", str(digits), dataset="digits", epochs=1)
    with pytest.raises(InputError, match=r"student .*digits.pt takes inputs of shape 8x8 but teacher takes 40") as info:
        distill_checkpoint(tiny_cnn, tmp_path / "s.pt", DistillConfig(student=str(digits)))
    assert "\n" not in str(info.value)


def test_output_equal_to_input_is_refused_and_input_kept(tiny_cnn, tmp_path):
    before = _sha(tiny_cnn)
    with pytest.raises(InputError, match="is the input file"):
        distill_checkpoint(tiny_cnn, tiny_cnn, DistillConfig(width=0.5), force=True)
    assert _sha(tiny_cnn) == before
    existing = tmp_path / "s.pt"
    existing.write_bytes(b"keep me")
    with pytest.raises(InputError, match="--force"):
        distill_checkpoint(tiny_cnn, existing, DistillConfig(width=0.5))
    assert existing.read_bytes() == b"keep me"


# ---------------------------------------------------------------- hidden-state matching

@pytest.mark.parametrize("architecture", ["cnn", "lstm", "transformer"])
def test_feature_matching_loss_is_zero_for_the_teacher_itself(architecture):
    from aiopt.compress.distill import FeatureMatching

    torch.manual_seed(0)
    model = build_model(architecture, make_config(f"{architecture}:tiny", (40,), 10)).eval()
    example = torch.randn(4, 40)
    matching = FeatureMatching(architecture, model, model, example, weight=1.0)
    with torch.no_grad():
        width = matching.projection.weight.shape[0]
        matching.projection.weight.copy_(torch.eye(width))
        matching.projection.bias.zero_()
        model(example)
        assert float(matching.loss()) == 0.0
        matching.projection.bias.fill_(0.5)  # a different representation is penalised
        model(example)
        assert float(matching.loss()) > 0.0
    matching.remove()
    assert not model._forward_hooks and not any(m._forward_hooks for m in model.modules())


@pytest.mark.slow  # distillation with hidden-state matching (three epochs: fewer give a student aiopt refuses to write)
def test_distill_with_feature_matching_keeps_no_projection(teacher, tmp_path):
    result = distill_checkpoint(teacher, tmp_path / "s.pt", DistillConfig(width=0.5, epochs=3, feature_weight=1.0, compare_alone=False))
    assert result.report["feature_weight"] == 1.0
    student = load_model(result.path)
    plain = build_model("cnn", scale_config("cnn", make_config("cnn:tiny", (40,), 10), 0.5))
    assert student.model.state_dict().keys() == plain.state_dict().keys()  # the projection was training-only


def test_feature_matching_needs_the_teachers_architecture(teacher, tmp_path):
    with pytest.raises(InputError, match="teacher's architecture"):
        distill_checkpoint(teacher, tmp_path / "s.pt", DistillConfig(student="lstm:tiny", epochs=1, feature_weight=1.0))
    assert not (tmp_path / "s.pt").exists()


def test_defaults_follow_the_student_architecture():
    from aiopt.compress.distill import resolve_settings

    lstm = resolve_settings(DistillConfig(width=0.5), "lstm", same_architecture=True)
    assert (lstm.temperature, lstm.alpha, lstm.feature_weight, lstm.epochs) == (2.0, 0.5, 1.0, 60)
    assert resolve_settings(DistillConfig(width=0.5, epochs=5), "lstm", same_architecture=True).epochs == 5
    assert resolve_settings(DistillConfig(width=0.5), "cnn", same_architecture=True).epochs is None  # the recipe's
    across = resolve_settings(DistillConfig(student="lstm:tiny"), "lstm", same_architecture=False)
    assert across.feature_weight == 0.0  # shapes need not line up across architectures
    given = resolve_settings(DistillConfig(width=0.5, temperature=3.0, feature_weight=0.0), "transformer", same_architecture=True)
    assert (given.temperature, given.alpha, given.feature_weight) == (3.0, 0.5, 0.0)
