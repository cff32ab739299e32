"""invoke_cli (the app in this process) answers as the real entry point in a fresh process does:
same exit code, same stdout, same stderr (the program name aside: `python -m aiopt` there, `aiopt`
as the installed script says); and it leaves this process as it found it."""
import signal
import sys

import pytest

from conftest import invoke_cli, run_cli


@pytest.mark.parametrize("args", [["--version"], ["inspect", "nope.pt"], ["train"], ["train", "cnn", "--epochs", "many"]],
                         ids=["version", "missing-file", "usage", "bad-option"])
def test_in_process_matches_a_fresh_process(tmp_path, args):
    fresh, here = run_cli(*args, cwd=tmp_path), invoke_cli(*args, cwd=tmp_path)
    assert here.returncode == fresh.returncode
    assert here.stdout == fresh.stdout
    assert here.stderr == fresh.stderr.replace("python -m aiopt", "aiopt")


def test_debug_takes_effect_inside_and_nothing_leaks_out(tmp_path):
    from aiopt import cli

    argv, state, handler = list(sys.argv), dict(cli._state), signal.getsignal(signal.SIGINT)
    fresh, here = run_cli("--debug", "inspect", "nope.pt", cwd=tmp_path), invoke_cli("--debug", "inspect", "nope.pt", cwd=tmp_path)
    assert here.returncode == fresh.returncode == 2  # --debug shows the traceback and keeps the exit code (a missing file: 2)
    assert "Traceback" in here.stderr and here.stderr.strip().splitlines()[-1] == fresh.stderr.strip().splitlines()[-1]
    assert (sys.argv, dict(cli._state), signal.getsignal(signal.SIGINT)) == (argv, state, handler)
    assert invoke_cli("inspect", "nope.pt", cwd=tmp_path).stderr.startswith("error: ")  # --debug did not stick
