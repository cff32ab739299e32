"""gpt:tiny trained and exported once per test session, shared by the tests/test_llm_*.py files
that only read them (each is seconds of work done once)."""
from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

from conftest import run_cli

_ROOT = Path(tempfile.mkdtemp(prefix="aiopt-llm-tests-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


@functools.cache
def tiny_gpt() -> tuple[Path, dict]:
    """(folder, the train command's JSON): `aiopt train gpt:tiny -o DIR` run as a user would."""
    folder = _ROOT / "gpt-tiny"
    result = run_cli("train", "gpt:tiny", "-o", str(folder), "--json")
    assert result.returncode == 0, result.stderr
    return folder, json.loads(result.stdout)


@functools.cache
def tiny_export() -> tuple[Path, dict]:
    """(export folder, the export command's JSON) of tiny_gpt's folder."""
    folder, _ = tiny_gpt()
    out = _ROOT / "gpt-tiny.onnx"
    result = run_cli("export", str(folder), "--format", "onnx", "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout)


def generated_by_runtime(artifacts: dict[str, Path], prompt: str, tokens: int = 16) -> dict[str, dict]:
    """`aiopt generate ARTIFACT --json` for each named artifact, run on the runtime it names."""
    runs = {}
    for name, path in artifacts.items():
        result = run_cli("generate", str(path), "--prompt", prompt, "-n", str(tokens), "--json")
        assert result.returncode == 0, result.stderr[-2000:]
        runs[name] = json.loads(result.stdout)
    return runs
