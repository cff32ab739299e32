"""The reliability issue's table of bad inputs, through the real `aiopt` entry point in a fresh
process where the process is the subject (full disk, signals, kills, two writers, what ONNX
Runtime's C logger writes); the other rows run the same app in this process (`invoke_cli`).

Rows tested here: full disk and unwritable folder during a write, Ctrl-C during train/quantize/
bench (and Ctrl-C that a library turns into its own error), a kill during a forced overwrite,
two processes writing one output, an op ONNX Runtime lacks, labels out of range, `--device cuda`
without a GPU, calibration determinism.
Rows tested beside the code they cover: missing path / folder / empty / truncated / random bytes
(test_cli.py, test_artifacts.py), code-running pickles (test_cli.py::test_pickle_payload_never_
runs_without_opt_in, test_artifacts.py), TorchScript without input spec and malformed shapes
(test_cli.py), ONNX external data outside its folder (test_artifacts.py), calibration/eval .npz
problems (test_data.py, test_quantize.py), quantization that collapses agreement
(test_quantize.py), engines for another TensorRT/GPU (test_tensorrt.py). Fuzzing: test_fuzz_loaders.py.
"""
from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from conftest import invoke_cli, run_cli


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    """Temporary files an interrupted write would leave: there must be none."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def _aiopt(*args: str, cwd: Path, preexec_fn=None, env: dict | None = None) -> subprocess.Popen:
    def prepare() -> None:
        # As at a terminal: a runner that started us in the background (`cmd &` in a script) leaves
        # SIGINT ignored, and Python then installs no KeyboardInterrupt handler at all.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if preexec_fn:
            preexec_fn()

    return subprocess.Popen([sys.executable, "-m", "aiopt", *args], cwd=cwd, preexec_fn=prepare,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**(env or os.environ), "NO_COLOR": "1", "COLUMNS": "200"})


def _file_size_limit(limit: int):
    """A real write failure without filling the disk: RLIMIT_FSIZE makes writes past `limit` fail with EFBIG."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write() instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize("command, output", [
    (["export", "{model}", "-o", "out.onnx", "--force"], "out.onnx"),  # onnx.save
    (["prune", "{model}", "--method", "magnitude", "--sparsity", "0.5", "--finetune-epochs", "0", "-o", "out.pt", "--force"], "out.pt"),  # torch.save
])
def test_full_disk_during_write_keeps_previous_output(tmp_path, tiny_cnn, command, output):
    model = tmp_path / "model.pt"
    model.write_bytes(tiny_cnn.read_bytes())
    previous = tmp_path / output
    previous.write_bytes(b"the previous result")
    before = _digest(model)
    process = _aiopt(*(a.format(model=model) for a in command), cwd=tmp_path, preexec_fn=_file_size_limit(2048))
    _, err = process.communicate(timeout=300)
    assert process.returncode == 2, err
    assert "cannot write" in err and "File too large" in err and "Traceback" not in err
    assert previous.read_bytes() == b"the previous result"
    assert _digest(model) == before
    assert _leftovers(tmp_path) == []


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create files in. As root, permission bits do not stop
    writes, so use /sys, which containers mount read-only."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    folder = Path("/sys")
    try:
        (folder / ".aiopt-probe").write_bytes(b"")
    except OSError:
        return folder
    (folder / ".aiopt-probe").unlink()
    pytest.skip("running as root with a writable /sys: no read-only folder to write into")


def test_unwritable_output_folder(tmp_path, tiny_cnn):
    folder = _unwritable_folder(tmp_path)
    result = invoke_cli("export", str(tiny_cnn), "-o", str(folder / "cnn.onnx"))
    assert result.returncode == 2, result.stderr
    assert "cannot write" in result.stderr and str(folder) in result.stderr
    assert not (folder / "cnn.onnx").exists()


def _wait_until_running(process: subprocess.Popen, timeout: float = 120) -> None:
    """The CLI imports torch only inside a command, so a mapped libtorch means the command
    (and its Ctrl-C handling) is running; SIGINT before that would hit the interpreter's startup."""
    maps = Path(f"/proc/{process.pid}/maps")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"aiopt ended before it could be interrupted: {process.communicate()}")
        try:
            if "libtorch" in maps.read_text():
                time.sleep(1.5)  # into the work itself
                return
        except OSError:
            pass
        time.sleep(0.1)
    pytest.fail("aiopt did not start its command in time")


@pytest.mark.parametrize("command, output", [
    (["train", "cnn:tiny", "--epochs", "500", "-o", "out.pt"], "out.pt"),
    (["quantize", "{model}", "-o", "out.onnx"], "out.onnx"),
    (["bench", "{model}", "--min-time", "60", "--json", "out.json"], "out.json"),
])
def test_ctrl_c_exits_130_and_writes_nothing(tmp_path, tiny_cnn, command, output):
    process = _aiopt(*(a.format(model=tiny_cnn) for a in command), cwd=tmp_path)
    _wait_until_running(process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not (tmp_path / output).exists()
    assert _leftovers(tmp_path) == []


_CTRL_C_SWALLOWING_MODEL = """
import signal
import torch


class SwallowsCtrlC(torch.nn.Module):
    \"\"\"Ctrl-C arrives in its forward and comes out as another error with no link to it, as
    torch.onnx.export's does when Ctrl-C lands in one of its lazy imports. It leaves an exec() of a
    string by KeyboardInterrupt, as code generated by dataclasses or torch does: after that,
    CPython 3.11's `python -m` ends by SIGINT unless aiopt exits on its own.\"\"\"

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(40, 4)

    def forward(self, x):
        try:
            exec("signal.raise_signal(signal.SIGINT)")
        except KeyboardInterrupt:
            raise RuntimeError("something failed") from None
        return self.linear(x)
"""


def test_ctrl_c_a_library_turned_into_its_own_error_still_exits_130(tmp_path):
    (tmp_path / "swallows.py").write_text(_CTRL_C_SWALLOWING_MODEL)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    subprocess.run([sys.executable, "-c", "import torch, swallows; torch.save(swallows.SwallowsCtrlC(), 'm.pt')"],
                   cwd=tmp_path, env=env, check=True)
    process = _aiopt("export", "m.pt", "-o", "m.onnx", "--trust-pickle", "--input-shape", "1x40", cwd=tmp_path, env=env)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    assert "interrupted" in err and "something failed" not in err
    assert not (tmp_path / "m.onnx").exists() and _leftovers(tmp_path) == []


def test_kill_during_forced_overwrite_keeps_previous_file(tmp_path):
    previous = tmp_path / "out.pt"
    previous.write_bytes(b"the previous checkpoint")
    process = _aiopt("train", "cnn:tiny", "--epochs", "500", "-o", "out.pt", "--force", cwd=tmp_path)
    _wait_until_running(process)
    process.kill()  # no handler runs: only the write-then-rename protocol protects the file
    process.communicate(timeout=60)
    assert previous.read_bytes() == b"the previous checkpoint"


@pytest.mark.slow  # end to end: two fresh processes export the same model at once
def test_two_writers_of_one_output_never_mix(tmp_path, tiny_cnn):
    writers = [_aiopt("export", str(tiny_cnn), "-o", "same.onnx", cwd=tmp_path) for _ in range(2)]
    results = [(w.wait(timeout=300), w.communicate()[1]) for w in writers]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results  # one wins whole; the other is told and writes nothing
    loser = next(err for code, err in results if code == 2)
    assert "same.onnx" in loser and ("already exists" in loser or "appeared while this command ran" in loser)
    onnx.checker.check_model(onnx.load(str(tmp_path / "same.onnx")), full_check=True)
    assert _leftovers(tmp_path) == []


@pytest.fixture
def model_with_op_ort_lacks(tmp_path) -> Path:
    """Valid ONNX (the checker passes) that ONNX Runtime's CPU provider has no kernel for: Tan on float64."""
    node = helper.make_node("Tan", ["x"], ["y"])
    graph = helper.make_graph([node], "tan", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["batch", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / "tan.onnx"
    onnx.save(model, str(path))
    np.savez(tmp_path / "x.npz", x=np.zeros((2, 4)))
    return path


@pytest.mark.parametrize("command, output", [
    (["run", "tan.onnx", "--input", "x.npz", "-o", "y.npz"], "y.npz"),
    (["quantize", "tan.onnx", "-o", "tan.int8.onnx"], "tan.int8.onnx"),
    (["bench", "tan.onnx", "-b", "1", "--min-time", "0.1", "--json", "r.json"], "r.json"),
])
def test_op_onnxruntime_lacks_exits_3_naming_it(tmp_path, model_with_op_ort_lacks, command, output):
    result = run_cli(*command, cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "does not implement op Tan" in last
    assert "Traceback" not in result.stderr
    assert not (tmp_path / output).exists()


def test_labels_out_of_range_exit_2(tmp_path, tiny_cnn):
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 40), np.float32), y=np.array([0, 1, 2, 99]))
    result = invoke_cli("compare", str(tiny_cnn), str(tiny_cnn), "--data", "bad.npz", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "labels range 0..99" in result.stderr and "10 outputs" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU; the row is about machines without one")
def test_device_cuda_without_gpu_exit_4(tmp_path, tiny_cnn):
    np.savez(tmp_path / "x.npz", x=np.zeros((2, 40), np.float32))
    result = invoke_cli("run", str(tiny_cnn), "--input", "x.npz", "-o", "y.npz", "--device", "cuda", cwd=tmp_path)
    assert result.returncode == 4, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "no CUDA GPU" in result.stderr
    assert not (tmp_path / "y.npz").exists()


def test_calibration_is_deterministic(tmp_path, tiny_cnn):
    """Two static INT8 runs with the same seed give the same scales, zero points and weights."""
    from aiopt.quantize.run import QuantizeConfig, quantize_artifact

    def weights(path: Path) -> str:
        digest = hashlib.sha256()
        for tensor in sorted(onnx.load(str(path)).graph.initializer, key=lambda t: t.name):
            digest.update(tensor.name.encode() + onnx.numpy_helper.to_array(tensor).tobytes())
        return digest.hexdigest()

    config = QuantizeConfig(method="static", calib_samples=128, seed=3)
    first = quantize_artifact(tiny_cnn, tmp_path / "a.onnx", config)
    second = quantize_artifact(tiny_cnn, tmp_path / "b.onnx", config)
    assert weights(Path(first.path)) == weights(Path(second.path))
    assert first.report["accuracy"] == second.report["accuracy"]
