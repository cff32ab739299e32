"""The artifact format registry (issue 24): formats are told apart by content through each format's
sniff(); aiopt checkpoints are rebuilt by the builder their architecture registered, at every entry
point, without the artifacts package importing the reference models."""
import subprocess
import sys

import pytest
import torch

from aiopt import reference_models
from aiopt.architectures import registered_architectures
from aiopt.artifacts import FORMAT_AIOPT, FORMATS, load_model, save_checkpoint
from aiopt.artifacts.probe import probe
from aiopt.errors import InputError


def _tiny_checkpoint(path, architecture="cnn"):
    config = reference_models.make_config(f"{architecture}:tiny", (40,), 10)
    model = reference_models.build_model(architecture, config)
    metadata = {"architecture": architecture, "config": reference_models.config_to_dict(config),
                "inputs": [{"name": "x", "shape": ["batch", 40], "dtype": "float32"}]}
    return save_checkpoint(model, metadata, path), model


def test_reference_models_register_every_architecture_they_build():
    assert set(registered_architectures()) == set(reference_models.all_model_names())


@pytest.mark.parametrize("entry", ["from aiopt.artifacts import load_model", "from aiopt import load_model",
                                   "from aiopt.artifacts.registry import load_model"])
def test_a_checkpoint_loads_in_a_fresh_process_from_every_library_entry(tmp_path, entry):
    path, _ = _tiny_checkpoint(tmp_path / "cnn.pt")
    code = f"{entry}\nloaded = load_model({str(path)!r})\nprint(loaded.format, type(loaded.model).__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [FORMAT_AIOPT, "CNN"]


def test_a_checkpoint_loads_through_python_dash_m_aiopt(tmp_path):
    path, _ = _tiny_checkpoint(tmp_path / "cnn.pt")
    result = subprocess.run([sys.executable, "-m", "aiopt", "inspect", str(path), "--json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert '"architecture": "cnn"' in result.stdout


def test_the_rebuilt_checkpoint_computes_what_was_saved(tmp_path):
    path, model = _tiny_checkpoint(tmp_path / "m.pt", "lstm")
    x = torch.randn(3, 40)
    with torch.no_grad():
        assert torch.equal(load_model(path).model(x), model.eval()(x))


def test_an_unregistered_architecture_is_one_input_error(tmp_path):
    path, _ = _tiny_checkpoint(tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["metadata"] = payload["metadata"].replace('"architecture": "cnn"', '"architecture": "resnet9000"')
    torch.save(payload, tmp_path / "odd.pt")
    with pytest.raises(InputError, match="unknown model 'resnet9000'; known models: cnn, lstm, transformer, gpt"):
        load_model(tmp_path / "odd.pt")


def test_the_first_format_to_claim_a_file_is_its_own(tmp_path):
    path, model = _tiny_checkpoint(tmp_path / "m.pt")
    script = tmp_path / "m.ts"
    torch.jit.save(torch.jit.trace(model.eval(), torch.randn(1, 40)), str(script))
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    garbage = tmp_path / "x.onnx"
    garbage.write_bytes(b"not a model at all")
    for file, expected in [(path, "checkpoint"), (script, "torchscript"), (legacy, "torch_pickle"), (garbage, "onnx")]:
        claims = [f.__name__.rsplit(".", 1)[-1] for f in FORMATS if f.sniff(probe(file))]
        assert claims[0] == expected, (file, claims)


def test_registration_at_import_aiopt_loads_no_format_module():
    code = ("import sys, aiopt\nfrom aiopt.architectures import registered_architectures\n"
            "assert registered_architectures(), 'nothing registered'\n"
            "loaded = [m for m in sys.modules if m.startswith('aiopt.artifacts') or m in ('torch', 'numpy', 'zipfile')]\n"
            "assert not loaded, loaded")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
