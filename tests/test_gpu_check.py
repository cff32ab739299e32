"""scripts/gpu_check.sh, dry-run where there is no GPU: one line, exit 4, nothing written."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.sh"


def _gpu_check(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: there the script runs the GPU tests")
def test_without_a_gpu_it_says_so_in_one_line_and_exits_4(tmp_path):
    out = tmp_path / "reports"
    result = _gpu_check(str(out))
    assert result.returncode == 4, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0], result.stderr
    assert not out.exists()


def test_without_an_outdir_it_prints_usage_and_exits_2():
    result = _gpu_check()
    assert result.returncode == 2 and result.stderr.startswith("usage: bash scripts/gpu_check.sh OUTDIR")
