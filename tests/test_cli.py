"""The command line's contract: JSON on stdout, one-line errors, exit codes. In this process
(`invoke_cli`), which tests/test_cli_inprocess.py shows answers as a fresh process does; the
version and a missing file go through the real `aiopt` entry point in a fresh process."""
import json

import pytest
import torch

from conftest import invoke_cli, run_cli


def test_version_and_help():
    assert run_cli("--version").stdout.strip().startswith("aiopt ")
    for command in ("train", "inspect"):
        result = invoke_cli(command, "--help")
        assert result.returncode == 0 and "Example: aiopt " + command in result.stdout


def test_train_json_then_inspect(tmp_path):
    # digits: an epoch a tenth of MNIST-1D's; what is checked is the JSON and the record, not the training
    result = invoke_cli("train", "cnn:tiny", "--dataset", "digits", "--epochs", "1", "-o", "m.pt", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # the whole of stdout is one JSON document
    assert summary["architecture"] == "cnn" and summary["size"] == "tiny" and summary["epochs"] == 1
    info = json.loads(invoke_cli("inspect", "m.pt", "--json", cwd=tmp_path).stdout)
    assert info["format"] == "aiopt-checkpoint"
    assert info["params"] == summary["params"]
    assert info["lineage"][0]["step"] == "train"
    assert info["metadata"]["command"] == "aiopt train cnn:tiny --dataset digits --epochs 1 -o m.pt --json"
    human = invoke_cli("inspect", "m.pt", cwd=tmp_path)
    assert "x: batch x 8 x 8 float32" in human.stdout


def _assert_one_line_error(result, code, *fragments):
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_file(tmp_path):
    _assert_one_line_error(run_cli("inspect", "nope.pt", cwd=tmp_path), 2, "nope.pt does not exist")


def test_corrupt_checkpoint(tmp_path, tiny_cnn):
    (tmp_path / "bad.pt").write_bytes(tiny_cnn.read_bytes()[:1000])
    _assert_one_line_error(invoke_cli("inspect", "bad.pt", cwd=tmp_path), 2, "not a valid")


def test_unknown_model_lists_known(tmp_path):
    _assert_one_line_error(invoke_cli("train", "resnet", "-o", "m.pt", cwd=tmp_path), 2, "cnn, lstm, transformer")
    assert list(tmp_path.iterdir()) == []


def test_output_into_missing_folder_writes_nothing(tmp_path):
    _assert_one_line_error(invoke_cli("train", "cnn:tiny", "-o", "missing/m.pt", cwd=tmp_path), 2, "does not exist")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_force(tmp_path):
    (tmp_path / "m.pt").write_bytes(b"precious")
    _assert_one_line_error(invoke_cli("train", "cnn:tiny", "--epochs", "1", "-o", "m.pt", cwd=tmp_path), 2, "--force")
    assert (tmp_path / "m.pt").read_bytes() == b"precious"


def test_pickle_payload_never_runs_without_opt_in(tmp_path):
    from test_artifacts import FileCreatingPayload

    marker = tmp_path / "payload-ran"
    torch.save(FileCreatingPayload(marker), tmp_path / "evil.pt")
    _assert_one_line_error(invoke_cli("inspect", "evil.pt", cwd=tmp_path), 2, "--trust-pickle", "run code")
    assert not marker.exists()


def test_torchscript_needs_input_shape_for_outputs(tmp_path):
    module = torch.nn.Linear(40, 10)
    torch.jit.save(torch.jit.trace(module, torch.randn(1, 40)), str(tmp_path / "m.ts"))
    info = json.loads(invoke_cli("inspect", "m.ts", "--input-shape", "1x40", "--json", cwd=tmp_path).stdout)
    assert info["outputs"][0]["shape"] == ["batch", 10]
    _assert_one_line_error(invoke_cli("inspect", "m.ts", "--input-shape", "1x41", cwd=tmp_path), 2, "--input-shape")
    _assert_one_line_error(invoke_cli("inspect", "m.ts", "--input-shape", "abc", cwd=tmp_path), 2, "malformed")


@pytest.mark.parametrize("args", [["train"], ["train", "cnn", "--epochs", "many"]])
def test_usage_errors_exit_2(tmp_path, args):
    assert invoke_cli(*args, cwd=tmp_path).returncode == 2
