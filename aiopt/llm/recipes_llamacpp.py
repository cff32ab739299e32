"""llama.cpp candidates (GGUF Q8_0 / Q4_0 / Q4_K_M, run by llama-cpp-python): offered only when
llama-cpp-python is installed (`pip install 'aiopt[llamacpp]'`); absent, each is a skipped row
with that install line, and `--backend llamacpp` is exit 4 with it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aiopt.errors import MissingDependencyError, UnsupportedModelError

INSTALL = "pip install 'aiopt[llamacpp]'  (llama-cpp-python; builds llama.cpp from source, 10+ minutes)"
GGUF_TYPES = ("Q8_0", "Q4_0", "Q4_K_M")


@dataclass(frozen=True)
class LlamaCppRecipe:
    name: str
    gguf_type: str

    runtime = "llamacpp"

    def describe(self) -> str:
        return f"llama.cpp GGUF {self.gguf_type}"


def llamacpp_recipes() -> list[LlamaCppRecipe]:
    return [LlamaCppRecipe(f"llamacpp-{t.lower()}", t) for t in GGUF_TYPES]


def llamacpp_missing() -> str | None:
    """Why llama.cpp candidates cannot be built here (None: they can be tried)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return f"llama-cpp-python is not installed; run: {INSTALL}"
    # llama-cpp-python runs GGUF files but does not ship llama.cpp's convert_hf_to_gguf.py,
    # which writing a GGUF from a Hugging Face folder needs.
    return "writing a GGUF from the folder needs llama.cpp's convert_hf_to_gguf.py, which aiopt does not drive yet"


def require_llamacpp() -> None:
    try:
        import llama_cpp  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(f"--backend llamacpp needs llama-cpp-python; run: {INSTALL}") from exc


def is_gguf(path) -> bool:
    path = Path(path)
    return path.suffix == ".gguf" and path.is_file() or path.is_dir() and any(path.glob("*.gguf")) and not (path / "config.json").is_file()


def open_gguf(path, threads: int | None = None, runtime: str | None = None):
    """A GGUF file: needs llama-cpp-python (exit 4 with the install line when absent)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(f"{path} is a GGUF model, which runs on llama.cpp; install it with: {INSTALL}") from exc
    raise UnsupportedModelError(f"{path} is a GGUF model; aiopt's generate loop does not drive llama.cpp yet: run it with llama-cpp-python "
                                "(python -m llama_cpp.server --model FILE)")
