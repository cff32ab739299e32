"""Hostile artifact metadata (issue 23): by-batch routes naming files outside the artifact, links,
malformed serving settings; copy_artifact, inspect, bench and deploy all check them the same way
(aiopt.artifacts.checks), end in one line with exit 2, and write nothing outside their output.
Triton: names checked, every string escaped, nothing written before everything is checked."""
from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from aiopt.errors import InputError  # noqa: E402
from aiopt.fileio import sha256_file  # noqa: E402


def cli(*args: str):
    """The real CLI in this process (typer's CliRunner)."""
    from typer.testing import CliRunner

    from aiopt.cli import app

    return CliRunner().invoke(app, list(args), env={"NO_COLOR": "1", "COLUMNS": "200"})


def one_line(result, code: int, *fragments: str) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "unexpected" not in lines[0], result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def tree(root):
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(root.rglob("*"))}


def matmul_onnx(path, input_name="x", metadata=None, weight=1.0):
    from onnx import TensorProto, helper, numpy_helper

    from aiopt.artifacts import embed_metadata

    graph = helper.make_graph([helper.make_node("MatMul", [input_name, "w"], ["logits"])], "g",
                              [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
                              [numpy_helper.from_array(np.full((4, 3), weight, np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    embed_metadata(model, {"inputs": [{"name": input_name, "shape": ["batch", 4], "dtype": "float32"}], **(metadata or {})})
    onnx.save(model, str(path))
    return path


def by_batch(folder, file=None, sha256=None, **extra):
    """main.onnx whose batches up to 8 are served from a companion (main.upto-b8.onnx, written)."""
    folder.mkdir(exist_ok=True)
    companion = matmul_onnx(folder / "main.upto-b8.onnx", weight=1.0)
    name = file if file is not None else companion.name
    route = {"max_batch": 8, "runtime": "onnxruntime", "file": name, "sha256": sha256 or sha256_file(companion)}
    return matmul_onnx(folder / "main.onnx", metadata={"dispatch": [route, {"max_batch": None, "runtime": "onnxruntime"}], **extra})


@pytest.mark.parametrize("name", ["/etc/passwd", "../secret.onnx", "sub/x.onnx", ".hidden.onnx", "..", 5, ["a"], 'x"\nbackend: "python'])
def test_route_files_outside_the_folder_are_refused_by_every_reader(tmp_path, name):
    from aiopt.artifacts import artifact_files, artifact_size, copy_artifact, load_model

    (tmp_path / "secret.onnx").write_bytes(b"secret")
    main = by_batch(tmp_path / "a", file=name)
    (tmp_path / "dest").mkdir()
    before = tree(tmp_path)
    for call in (lambda: load_model(main), lambda: artifact_files(main), lambda: artifact_size(main),
                 lambda: copy_artifact(main, tmp_path / "dest" / "m.onnx")):
        with pytest.raises(InputError, match="outside its folder|damaged"):
            call()
    one_line(cli("inspect", str(main)), 2)
    one_line(cli("bench", str(main), "-b", "1", "--min-runs", "1", "--warmup", "0"), 2)
    one_line(cli("deploy", str(main), "--triton", str(tmp_path / "repo")), 2)
    assert tree(tmp_path) == before  # nothing copied, no repository made


def test_companion_links_and_altered_companions_are_refused(tmp_path):
    from aiopt.artifacts import copy_artifact, load_model
    from aiopt.inspect import inspect_artifact
    from aiopt.runtime import load

    main = by_batch(tmp_path / "a")
    companion = main.with_name("main.upto-b8.onnx")
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(companion.read_bytes())
    companion.unlink()
    companion.symlink_to(outside)  # the same bytes, but from elsewhere
    (tmp_path / "dest").mkdir()
    for call in (lambda: load(main), lambda: copy_artifact(main, tmp_path / "dest" / "m.onnx"), lambda: inspect_artifact(main)):
        with pytest.raises(InputError, match="link or not a plain file"):
            call()
    assert list((tmp_path / "dest").iterdir()) == []
    companion.unlink()
    companion.write_bytes(matmul_onnx(tmp_path / "other.onnx", weight=2.0).read_bytes())
    with pytest.raises(InputError, match="sha256 differs"):
        copy_artifact(main, tmp_path / "dest" / "m.onnx")
    assert load_model(main).metadata["dispatch"][0]["file"] == companion.name  # the metadata itself is fine
    with pytest.raises(InputError, match="no valid sha256"):
        load_model(by_batch(tmp_path / "b", sha256="not-a-digest"))


def test_copy_never_overwrites_silently_and_copies_only_the_artifact(tmp_path):
    from aiopt.artifacts import copy_artifact
    from aiopt.runtime import load

    main = by_batch(tmp_path / "a")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "main.upto-b8.onnx").write_bytes(b"mine")
    with pytest.raises(InputError, match="already exists"):
        copy_artifact(main, dest / "renamed.onnx")
    assert (dest / "main.upto-b8.onnx").read_bytes() == b"mine" and not (dest / "renamed.onnx").exists()
    copy_artifact(main, dest / "renamed.onnx", force=True)
    assert sorted(p.name for p in dest.iterdir()) == ["main.upto-b8.onnx", "renamed.onnx"]
    assert load(dest / "renamed.onnx")(np.ones((2, 4), np.float32))["logits"].shape == (2, 3)
    main.with_name("main.upto-b8.onnx").unlink()
    with pytest.raises(InputError, match="not beside it"):
        copy_artifact(main, tmp_path / "x.onnx")


def test_a_missing_companion_runs_the_main_file_alone(tmp_path):
    main = by_batch(tmp_path / "a")
    main.with_name("main.upto-b8.onnx").unlink()
    result = cli("inspect", str(main), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["size_bytes"] == main.stat().st_size
    result = cli("bench", str(main), "--backend", "onnxruntime", "-b", "1", "--min-runs", "2", "--warmup", "0", "--min-time", "0",
                 "--no-baseline")
    assert result.exit_code == 0, result.stderr
    one_line(cli("bench", str(main), "-b", "1", "--min-runs", "2", "--warmup", "0", "--no-baseline"), 2, "not beside it", "--backend onnxruntime")


@pytest.mark.parametrize("metadata, fragment", [
    ({"serving": {"threads": "many"}}, "serving.threads"),
    ({"serving": {"threads": 0}}, "serving.threads"),
    ({"serving": "fast"}, "serving is"),
    ({"serving": {"inference_precision": "fp4"}}, "inference_precision"),
    ({"dispatch": {"max_batch": 8}}, "dispatch is"),
    ({"dispatch": []}, "dispatch is"),
    ({"dispatch": [{"max_batch": "eight", "runtime": "onnxruntime"}, {"max_batch": None, "runtime": "onnxruntime"}]}, "max_batch"),
    ({"dispatch": [{"max_batch": None, "runtime": "onnxruntime"}, {"max_batch": 8, "runtime": "onnxruntime"}]}, "not the last"),
    ({"dispatch": [{"max_batch": None, "runtime": "python"}]}, "runtime"),
    ({"dispatch": [{"runtime": "onnxruntime"}]}, "no max_batch"),
    ({"serving": {"threads": 2**70}}, "serving.threads"),
    ({"hf": {"folder": "a\nb"}}, "hf.folder"),
    ({"dispatch": [{"max_batch": None, "runtime": "onnxruntime", "serving": {"threads": "many"}}]}, "threads"),
    ({"hf": "folder"}, "hf is"),
])
def test_malformed_serving_metadata_is_one_line_and_never_reaches_triton(tmp_path, metadata, fragment):
    main = matmul_onnx(tmp_path / "m.onnx", metadata=metadata)
    before = tree(tmp_path)
    one_line(cli("inspect", str(main)), 2, fragment)
    one_line(cli("deploy", str(main), "--triton", str(tmp_path / "repo")), 2, fragment)
    one_line(cli("run", str(main), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "o.npz")), 2)
    assert tree(tmp_path) == before


# ---------------------------------------------------------------- Triton

def parse_config(path):
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient is in the test extra")
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.mark.parametrize("name", ['x"\nbackend: "python', "a/b", ".hidden", "..", "1", "", "x" * 200, "név", "a b", "a\\b"])
def test_triton_names_are_checked_before_anything_is_written(tmp_path, name):
    main = matmul_onnx(tmp_path / "m.onnx")
    one_line(cli("deploy", str(main), "--triton", str(tmp_path / "repo"), "--name", name), 2, "Triton model name")
    assert not (tmp_path / "repo").exists()


def test_tensor_names_are_escaped_in_the_config(tmp_path):
    hostile = 'x"\n}\n]\nbackend: "python"\ninput [ {\n  name: "y'
    main = matmul_onnx(tmp_path / "m.onnx", input_name=hostile, metadata={"lineage": [{"step": 'train"\nbackend: "python'}]})
    result = cli("deploy", str(main), "--triton", str(tmp_path / "repo"), "--name", "safe")
    assert result.exit_code == 0, result.stderr
    text = (tmp_path / "repo" / "safe" / "config.pbtxt").read_text()
    assert "\nbackend:" not in text
    config = parse_config(tmp_path / "repo" / "safe" / "config.pbtxt")
    assert config.platform == "onnxruntime_onnx" and not config.backend and config.input[0].name == hostile
    assert json.loads(config.parameters["aiopt_lineage"].string_value) == ['train"\nbackend: "python']


def test_triton_repository_that_is_a_file(tmp_path):
    main = matmul_onnx(tmp_path / "m.onnx")
    (tmp_path / "repo").write_text("not a folder")
    one_line(cli("deploy", str(main), "--triton", str(tmp_path / "repo")), 2, "is a file")
    assert (tmp_path / "repo").read_text() == "not a folder"


def test_triton_config_keeps_valid_serving_settings(tmp_path):
    main = matmul_onnx(tmp_path / "m.onnx", metadata={"serving": {"threads": 2}})
    assert cli("deploy", str(main), "--triton", str(tmp_path / "repo")).exit_code == 0
    config = parse_config(tmp_path / "repo" / "m" / "config.pbtxt")
    assert config.parameters["intra_op_thread_count"].string_value == "2"
