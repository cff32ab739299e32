"""Result tables without a terminal (a pipe, a file, a CI log): every value whole, real headers.

rich falls back to 80 columns when stdout is not a terminal and used to cut values short
("art…", "/tm…"); these run the real entry point with stdout to a pipe and no COLUMNS set.
"""
import json
import os
import subprocess
import sys

import pytest
from conftest import invoke_cli

ELLIPSIS = "\u2026"


def _piped(*args: str, cwd, no_color: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR")}
    if no_color:
        env["NO_COLOR"] = "1"
    result = subprocess.run([sys.executable, "-m", "aiopt", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert ELLIPSIS not in result.stdout and ELLIPSIS not in result.stderr
    assert "\x1b[" not in result.stdout  # no colour or cursor codes in a log
    return result


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    """A folder whose paths alone are wider than 80 columns."""
    folder = tmp_path_factory.mktemp("cli-output") / ("a-folder-name-long-enough-to-push-every-path-past-eighty-columns" * 2)
    folder.mkdir()
    return folder


def test_train_and_inspect_tables_are_whole_with_headers(deep):
    model = deep / "cnn-tiny.pt"
    # digits: an epoch a tenth of MNIST-1D's (the tables, not the training, are the subject)
    result = _piped("train", "cnn:tiny", "--dataset", "digits", "--epochs", "1", "-o", str(model), cwd=deep, no_color=False)
    lines = result.stdout.splitlines()
    assert lines[0] == "trained cnn:tiny on digits"
    assert lines[1].split() == ["|", "field", "|", "value", "|"]  # a header, never a blank row
    assert any(line.split() == ["|", "path", "|", str(model), "|"] for line in lines)
    info = json.loads(invoke_cli("inspect", str(model), "--json", cwd=deep).stdout)  # the figures the table must show whole
    text = _piped("inspect", str(model), cwd=deep).stdout
    assert text.splitlines()[0] == str(model) and "| field" in text
    for value in (info["sha256"], info["metadata"]["command"], f"train: {model} (acc {info['accuracy']:.4f})"):
        assert value in text


def test_bench_table_keeps_paths_and_numbers_whole(deep, tiny_cnn):
    model = deep / "cnn.pt"
    model.write_bytes(tiny_cnn.read_bytes())
    report = deep / "r.json"
    result = _piped("bench", str(model), "--warmup", "1", "--min-runs", "3", "--min-time", "0.02", "-b", "1", "--json", str(report), "--force", cwd=deep)
    (record,) = json.loads(report.read_text())["records"]
    header, rule, row = result.stdout.splitlines()[1:4]
    assert [c.strip() for c in header.strip("|").split("|")] == ["artifact", "backend", "device", "batch", "p50 ms", "p99 ms", "samples/s",
                                                                   "accuracy", "agreement", "speedup", "size"]
    assert rule.startswith("|---") and rule.endswith(":|")  # Markdown, numbers right-aligned
    cells = [c.strip() for c in row.strip("|").split("|")]
    p50 = f"{record['latency_ms']['p50']:.3f}" + (" \u26a0" if record.get("unsteady") else "")  # flagged on a loaded machine
    assert cells[:5] == [f"{model} *", "torch", "cpu", "1", p50]
    assert cells[7] == f"{record['accuracy']:.4f}"
    assert f"{model} [torch/cpu] batch 1: p50" in result.stderr  # the record's progress line keeps its [backend/device]
