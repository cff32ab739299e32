"""The fuzzer's other surfaces (issue 23): hostile ONNX metadata, Hugging Face folders (config,
tokenizer, weights), text files, torn journals and Triton names each end in a result or aiopt's
one-line error; no folder code runs, nothing is written outside a case's output. Own process, as
for the artifact bytes (tests/test_fuzz_loaders.py)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("optuna")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fuzz_loaders.py"
SURFACES = {"onnx-metadata", "hf-config", "hf-tokenizer", "hf-weights", "text", "journal", "triton-name", "triton-tensor"}


@pytest.mark.slow  # end to end: 240 hostile inputs over eight surfaces in a fresh process; each surface's refusals have fast tests
def test_hostile_user_inputs_end_in_documented_errors():
    result = subprocess.run([sys.executable, str(SCRIPT), "--cases", "0", "--surface-cases", "30", "--seed", "1", "--json"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["findings"] == [], json.dumps(report["findings"][:5], indent=1)
    assert set(report["outcomes"]) == SURFACES and report["cases"] == 30 * len(SURFACES)
    refused = {name: sum(v for k, v in counts.items() if "Error" in k) for name, counts in report["outcomes"].items()}
    for name in SURFACES - {"triton-tensor", "journal"}:  # the hostile inputs really reach the checks
        assert refused[name] > 0, (name, report["outcomes"][name])
