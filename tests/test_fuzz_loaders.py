"""Mutated copies of real artifacts (every format) end in a model or a documented error, never
another exception or a crash. The fuzzer runs in its own process (scripts/fuzz_loaders.py) so a
crash in a C++ parser fails this test instead of killing pytest."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fuzz_loaders.py"


@pytest.mark.slow  # end to end: 1,000 mutated artifacts in a fresh process; each loader's refusals have fast tests (test_artifacts.py, test_untrusted_*.py)
def test_mutated_artifacts_end_in_documented_errors():
    result = subprocess.run([sys.executable, str(SCRIPT), "--cases", "250", "--seed", "0", "--surfaces", "none", "--json"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode in (0, 1), result.stderr[-2000:]  # anything else: the interpreter crashed
    report = json.loads(result.stdout)
    assert report["findings"] == [], json.dumps(report["findings"][:5], indent=1)
    assert set(report["outcomes"]) == {"checkpoint", "torchscript", "pt2", "onnx"}
    for name, counts in report["outcomes"].items():
        assert sum(counts.values()) == 250
        assert counts.get("InputError", 0) > 100, (name, counts)  # the mutations really reach the checks
