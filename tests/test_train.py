import hashlib
import json

import pytest
import torch

from aiopt.errors import InputError
from aiopt.reference_models.train import train_reference_model


def _weights_hash(path) -> str:
    state = torch.load(path, weights_only=True)["state_dict"]
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].numpy().tobytes())
    return digest.hexdigest()


def test_checkpoint_loads_with_weights_only_and_carries_metadata(tiny_cnn):
    payload = torch.load(tiny_cnn, weights_only=True)
    metadata = json.loads(payload["metadata"])
    assert metadata["architecture"] == "cnn" and metadata["size"] == "tiny"
    assert metadata["inputs"] == [{"name": "x", "shape": ["batch", 40], "dtype": "float32"}]
    assert metadata["dataset"]["name"] == "mnist1d"
    assert 0.0 <= metadata["metrics"]["accuracy"] <= 1.0
    assert metadata["step"] == "train" and metadata["parent"] is None
    assert metadata["lineage"][-1]["artifact"] == str(tiny_cnn)
    assert metadata["training"]["seed"] == 0 and metadata["training"]["epochs"] == 3


def test_training_learns(tiny_cnn):
    accuracy = json.loads(torch.load(tiny_cnn, weights_only=True)["metadata"])["metrics"]["accuracy"]
    assert accuracy > 0.3  # ten classes: chance is 0.1


def test_same_seed_gives_identical_weights(tmp_path):
    # on digits (1,347 rows of 8 steps, against MNIST-1D's 4,000 of 40): the same claim at a tenth of the work
    first = train_reference_model("lstm:tiny", str(tmp_path / "a.pt"), dataset="digits", epochs=1, seed=7)
    second = train_reference_model("lstm:tiny", str(tmp_path / "b.pt"), dataset="digits", epochs=1, seed=7)
    other = train_reference_model("lstm:tiny", str(tmp_path / "c.pt"), dataset="digits", epochs=1, seed=8)
    assert _weights_hash(first.path) == _weights_hash(second.path)
    assert _weights_hash(first.path) != _weights_hash(other.path)
    assert first.accuracy == second.accuracy


@pytest.mark.parametrize("name", ["transformer:tiny", "cnn:tiny"])
def test_trains_on_digits(tmp_path, name):
    result = train_reference_model(name, str(tmp_path / "m.pt"), dataset="digits", epochs=2)
    assert result.metadata["inputs"][0]["shape"] == ["batch", 8, 8]
    assert result.accuracy > 0.2


def test_interrupted_training_leaves_no_file(tmp_path):
    def interrupt(stats):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_reference_model("cnn:tiny", str(tmp_path / "m.pt"), dataset="digits", epochs=2, on_epoch=interrupt)  # digits: a tenth of MNIST-1D's epoch
    assert list(tmp_path.iterdir()) == []


def test_bad_output_paths_fail_before_training(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        train_reference_model("cnn:tiny", str(tmp_path / "missing" / "m.pt"), epochs=1)
    existing = tmp_path / "m.pt"
    existing.write_bytes(b"keep me")
    with pytest.raises(InputError, match="--force"):
        train_reference_model("cnn:tiny", str(existing), epochs=1)
    assert existing.read_bytes() == b"keep me"
    with pytest.raises(InputError, match="at least 1"):
        train_reference_model("cnn:tiny", str(tmp_path / "n.pt"), epochs=0)
