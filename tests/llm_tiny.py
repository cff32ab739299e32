"""gpt:tiny trained and exported once per test run (once for all xdist workers: `built_once` in
tests/conftest.py), shared by the tests/test_llm_*.py files that only read them (each is seconds of
work done once)."""
from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import conftest
from conftest import built_once, run_cli


def _run_once(name: str, *args: str) -> tuple[Path, dict]:
    """(NAME's path, the command's JSON): `aiopt ARGS -o PATH --json` run once for all workers; its JSON is kept beside."""
    def build(path: Path) -> None:
        result = run_cli(*args, "-o", str(path), "--json")
        assert result.returncode == 0, result.stderr
        path.with_suffix(".json").write_text(result.stdout)

    path = built_once(conftest.TMP_PATH_FACTORY, name, build)
    return path, json.loads(path.with_suffix(".json").read_text())


@functools.cache
def tiny_gpt() -> tuple[Path, dict]:
    """(folder, the train command's JSON): `aiopt train gpt:tiny -o DIR` run as a user would."""
    return _run_once("gpt-tiny", "train", "gpt:tiny")


@functools.cache
def tiny_export() -> tuple[Path, dict]:
    """(export folder, the export command's JSON) of tiny_gpt's folder."""
    folder, _ = tiny_gpt()
    return _run_once("gpt-tiny.onnx", "export", str(folder), "--format", "onnx")


def generated_by_runtime(artifacts: dict[str, Path], prompt: str, tokens: int = 16) -> dict[str, dict]:
    """`aiopt generate ARTIFACT --json` for each named artifact, run on the runtime it names."""
    runs = {}
    for name, path in artifacts.items():
        result = run_cli("generate", str(path), "--prompt", prompt, "-n", str(tokens), "--json")
        assert result.returncode == 0, result.stderr[-2000:]
        runs[name] = json.loads(result.stdout)
    return runs


def tiny_qwen2(folder: Path) -> Path:
    """A Qwen2 folder (q/k/v biases, llama.cpp's NEOX rotary: no q/k permutation in its GGUF) with
    random weights, the biases made large so a dropped bias would show, and gpt:tiny's tokenizer."""
    import torch
    import transformers

    tokenizer_folder, _ = tiny_gpt()
    torch.manual_seed(0)
    config = transformers.Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      vocab_size=600, max_position_embeddings=256, rope_theta=1e6, tie_word_embeddings=True,
                                      bos_token_id=0, eos_token_id=0)
    model = transformers.Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0, 0.5)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_folder / name, folder / name)
    return folder
