"""The benchmarks suite's quick mode (tiny models) end to end, as CI runs it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # trains, prunes, distills and quantizes a model, then benches six artifacts
def test_quick_suite_writes_json_markdown_and_html(tmp_path):
    results = tmp_path / "results"
    command = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--work", str(tmp_path / "work"),
               "--results", str(results), "--min-time", "0.05"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (report,) = results.glob("*-quick.json")
    document = json.loads(report.read_text())
    labels = {r["label"] for r in document["records"]}
    assert {"cnn fp32", "cnn fp32 onnx", "cnn int8", "cnn pruned 50%", "cnn distilled w0.45", "cnn pruned+distilled+int8"} == labels
    measured = [r for r in document["records"] if not r["skipped"]]
    assert all(r["speedup_vs_baseline"] is not None and r["accuracy"] is not None for r in measured)
    assert report.with_suffix(".md").read_text().startswith("## aiopt bench")
    assert "data:image/png;base64," in report.with_suffix(".html").read_text()
