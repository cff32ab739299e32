"""One runner factory across aiopt (issue 24): outside aiopt.runtime, Runners are built by
`aiopt.runtime.runner_for`, not by a backend's Runner class. The ONNX export's test-split check and
bench's torch.compile peer now go through it too; one exception remains, named with its reason."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import aiopt

PACKAGE = Path(aiopt.__file__).resolve().parent
RUNNER_CLASSES = {"OnnxRuntimeRunner", "OpenVinoRunner", "TorchRunner", "TensorRTRunner", "CudaGraphRunner"}
# --backend torch in quantize times the parent module and its reduced-precision copy in memory,
# eagerly; runner_for would run a torch-cuda parent as CUDA graphs (its buckets): not the same measurement.
ALLOWED = {("quantize/forced_torch.py", "TorchRunner")}


def _built_directly() -> list[str]:
    built = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = str(path.relative_to(PACKAGE))
        if where.startswith("runtime/"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
                if name in RUNNER_CLASSES and (where, name) not in ALLOWED:
                    built.append(f"{where}:{node.lineno} {name}")
    return built


def test_no_module_outside_the_runtime_builds_a_backend_runner_itself():
    assert not _built_directly(), "build these through aiopt.runtime.runner_for"


def test_the_scan_sees_a_direct_construction(tmp_path, monkeypatch):
    """The scan is not blind: a module that builds OnnxRuntimeRunner itself is reported."""
    fake = tmp_path / "aiopt"
    (fake / "export").mkdir(parents=True)
    (fake / "export" / "x.py").write_text("from aiopt.runtime.onnxruntime_backend import OnnxRuntimeRunner\nr = OnnxRuntimeRunner('m.onnx', [])\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert _built_directly() == ["export/x.py:2 OnnxRuntimeRunner"]
