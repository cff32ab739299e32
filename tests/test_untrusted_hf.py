"""Hostile Hugging Face folders (issue 23): code shipped in a folder never runs, even with `y` on
stdin; config.json sizes that would exhaust memory or are not numbers end in one line (exit 2);
damaged safetensors too. Each case checks the exit code, one line, and that nothing was written."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import invoke_cli

pytest.importorskip("transformers")
onnx = pytest.importorskip("onnx")

YES = "y\n" * 100  # what `yes y |` feeds a prompt


def aiopt(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "aiopt", *args], cwd=cwd, input=YES, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})})


def one_line_error(result, *codes):
    assert result.returncode in codes, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()  # progress lines may come first; the error is one line, the last
    errors = [line for line in lines if line.startswith("error") or "Traceback" in line]
    assert len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith("error: "), result.stderr
    assert "unexpected" not in errors[0], errors[0]
    return errors[0]


def evil_folder(folder, marker, model_type="evilnet"):
    """config.json (and tokenizer_config.json) whose auto_map points to evil.py in the folder,
    which writes `marker` when imported."""
    folder.mkdir()
    auto_map = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel", "AutoTokenizer": ["evil.EvilTokenizer", None]}
    (folder / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": ["EvilModel"], "auto_map": auto_map}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "EvilTokenizer", "auto_map": auto_map}))
    (folder / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
                                    "from transformers import PretrainedConfig\nclass EvilConfig(PretrainedConfig):\n"
                                    f"    model_type = {model_type!r}\n")
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    return folder


def refused_in_process(path, code=2):
    """load_model in this process (the CLI maps the error to its exit code in one line)."""
    from aiopt.artifacts import load_model
    from aiopt.errors import AioptError

    with pytest.raises(AioptError) as caught:
        load_model(path)
    assert caught.value.exit_code == code and "\n" not in str(caught.value), str(caught.value)
    return str(caught.value)


def files_under(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_code_in_a_folder_never_runs_even_with_yes_on_stdin(tmp_path):
    marker = tmp_path / "MARKER"
    folder = evil_folder(tmp_path / "evil", marker)
    before = files_under(tmp_path)
    for args in (["inspect", str(folder)], ["export", str(folder), "-o", str(tmp_path / "e.onnx")]):
        line = one_line_error(aiopt(*args, cwd=tmp_path), 2, 3)
        assert "never runs code" in line or "trust_remote_code" in line, line
    assert not marker.exists(), "code shipped in the folder ran"
    assert files_under(tmp_path) == before


def test_a_known_model_type_with_auto_map_loads_without_the_folder_code(tmp_path):
    """A standard architecture whose folder also ships code (and auto_map): transformers' own
    class is used; the folder's code is never imported."""
    from test_hf import make_bert_folder

    marker = tmp_path / "MARKER"
    folder = make_bert_folder(tmp_path / "bert")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n")
    result = aiopt("inspect", str(folder), "--json", cwd=tmp_path)
    assert not marker.exists(), "code shipped in the folder ran"
    if result.returncode != 0:  # refusing is acceptable too, in one line
        one_line_error(result, 2, 3)


def test_code_in_the_tokenizer_folder_an_onnx_file_names_never_runs(tmp_path):
    """An ONNX file whose metadata names a hostile folder for its tokenizer: `aiopt run` on text."""
    from onnx import TensorProto, helper

    from aiopt.artifacts import embed_metadata

    marker = tmp_path / "MARKER"
    folder = evil_folder(tmp_path / "evil", marker)
    graph = helper.make_graph([helper.make_node("Cast", ["input_ids"], ["out"], to=TensorProto.FLOAT)], "g",
                              [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "seq"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    embed_metadata(model, {"inputs": [{"name": "input_ids", "shape": ["batch", "seq"], "dtype": "int64"}],
                           "hf": {"folder": str(folder), "tokenizer": True, "vocab_size": 10}})
    onnx.save(model, str(tmp_path / "m.onnx"))
    (tmp_path / "t.txt").write_text("hello world\n")
    before = files_under(tmp_path)
    one_line_error(aiopt("run", str(tmp_path / "m.onnx"), "--input", str(tmp_path / "t.txt"), "-o", str(tmp_path / "o.npz"), cwd=tmp_path), 2, 3)
    assert not marker.exists(), "code shipped in the tokenizer folder ran"
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("change, fragment", [
    ({"num_hidden_layers": 1000000}, "max-model-memory"),
    ({"hidden_size": 1 << 20}, "max-model-memory"),
    ({"num_attention_heads": 0}, "num_attention_heads"),
    ({"hidden_size": "sixteen"}, "hidden_size"),
    ({"num_hidden_layers": True}, "num_hidden_layers"),
    ({"vocab_size": -5}, "vocab_size"),
    ({"hidden_size": 30, "num_attention_heads": 4}, "multiple"),
])
def test_config_sizes_are_checked_before_building(tmp_path, change, fragment):
    from test_hf import make_bert_folder

    folder = make_bert_folder(tmp_path / "bert", tokenizer=False)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    before = files_under(tmp_path)
    line = refused_in_process(folder) if change.get("num_hidden_layers") != 1000000 else one_line_error(aiopt("inspect", str(folder), cwd=tmp_path), 2)
    assert fragment in line, line
    assert files_under(tmp_path) == before


def test_the_memory_limit_can_be_raised(tmp_path):
    from aiopt.artifacts.checks import estimate_model_bytes, max_model_memory, parse_bytes

    params, needed = estimate_model_bytes({"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "vocab_size": 100}, "c")
    assert params > 2 * 4 * 32 * 32 and needed > 4 * params
    assert parse_bytes("40GB") == 40 << 30 and parse_bytes("512M") == 512 << 20 and parse_bytes("1000") == 1000
    os.environ["AIOPT_MAX_MODEL_MEMORY"] = "1TB"
    try:
        assert max_model_memory() == 1 << 40
    finally:
        del os.environ["AIOPT_MAX_MODEL_MEMORY"]
    from test_hf import make_bert_folder

    folder = make_bert_folder(tmp_path / "bert", tokenizer=False)
    # the command line in this process (the option's effect, not the process, is the subject); the option
    # sets AIOPT_MAX_MODEL_MEMORY for the process, so it is unset again afterwards
    try:
        line = one_line_error(invoke_cli("--max-model-memory", "1KB", "inspect", str(folder), cwd=tmp_path), 2)
        assert "max-model-memory" in line
        assert invoke_cli("--max-model-memory", "64GB", "inspect", str(folder), cwd=tmp_path).returncode == 0
    finally:
        os.environ.pop("AIOPT_MAX_MODEL_MEMORY", None)


@pytest.mark.parametrize("damage", ["truncate", "symlink-to-folder", "symlink-dangling", "garbage"])
def test_damaged_safetensors_is_one_line(tmp_path, damage):
    from test_hf import make_bert_folder

    folder = make_bert_folder(tmp_path / "bert", tokenizer=False)
    weights = folder / "model.safetensors"
    if damage == "truncate":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        weights.write_bytes(b"\xff" * 64)
    else:
        weights.unlink()
        (tmp_path / "sub").mkdir()
        weights.symlink_to(tmp_path / ("sub" if damage == "symlink-to-folder" else "nothing"))
    before = files_under(tmp_path)
    line = one_line_error(aiopt("inspect", str(folder), cwd=tmp_path), 2) if damage == "truncate" else refused_in_process(folder)
    assert "safetensors" in line, line
    assert files_under(tmp_path) == before


def test_text_path_that_is_a_folder_and_a_huge_line(tmp_path):
    from aiopt.errors import InputError
    from aiopt.specs import TensorSpec
    from aiopt.text_data import load_texts
    from test_hf import make_bert_folder

    folder = make_bert_folder(tmp_path / "bert")
    spec = [TensorSpec("input_ids", ("batch", "seq"), "int64"), TensorSpec("attention_mask", ("batch", "seq"), "int64")]
    (tmp_path / "dir.txt").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        load_texts(tmp_path / "dir.txt", folder, spec, seq_len=16)
    (tmp_path / "big.txt").write_text("short line\n" + "the cat sat " * 900_000 + "\nend\n")  # one ~10 MB line
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    inputs, notes = load_texts(tmp_path / "big.txt", folder, spec, seq_len=16)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert inputs["input_ids"].shape == (3, 16) and np.all(inputs["attention_mask"][1] == 1)
    assert len(notes) == 1 and "1 of 3 lines" in notes[0], notes
    assert grown_mb < 400, f"tokenizing one 10 MB line grew the process by {grown_mb:.0f} MB"
