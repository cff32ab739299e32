"""Integrity of aiopt's ONNX files (issue 23): embed_metadata records a checksum of the graph and
weights; load_model refuses a file changed since (one line, exit 3, naming it), inspect shows
ok / mismatch / absent, files without it load as before. And a user's --input-shape is honoured or
refused in one line, never silently replaced."""
from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from test_untrusted_artifacts import cli, matmul_onnx, one_line  # noqa: E402

from aiopt.errors import UnsupportedModelError  # noqa: E402


def test_a_changed_weight_is_refused_and_inspect_shows_it(tmp_path):
    from onnx import numpy_helper

    from aiopt.artifacts import load_model

    path = matmul_onnx(tmp_path / "m.onnx")
    assert load_model(path).integrity == "ok"
    assert json.loads(cli("inspect", str(path), "--json").stdout)["integrity"] == "ok"
    model = onnx.load(str(path))
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.full((4, 3), 1.5, np.float32), "w"))
    onnx.save(model, str(path))  # aiopt.json kept as it was, the weights changed
    with pytest.raises(UnsupportedModelError, match="changed since aiopt wrote it"):
        load_model(path)
    one_line(cli("run", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "o.npz")), 3, str(path), "changed since")
    one_line(cli("bench", str(path), "-b", "1"), 3, "changed since")
    result = cli("inspect", str(path), "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["integrity"] == "mismatch"
    assert "mismatch" in cli("inspect", str(path)).stdout
    assert not (tmp_path / "o.npz").exists()


def test_a_changed_graph_is_refused_and_a_file_without_checksum_loads(tmp_path):
    from aiopt.artifacts import METADATA_KEY, load_model

    path = matmul_onnx(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    model.graph.node[0].name = "renamed"
    onnx.save(model, str(path))
    with pytest.raises(UnsupportedModelError, match=str(path)):
        load_model(path)
    # an older or foreign file: no checksum, loads as before
    metadata = json.loads({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    del metadata["integrity"]
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = json.dumps(metadata)
    onnx.save(model, str(path))
    assert load_model(path).integrity == "absent"
    assert json.loads(cli("inspect", str(path), "--json").stdout)["integrity"] == "absent"


def test_checksum_ignores_its_own_entry_and_reembedding_keeps_it_valid(tmp_path):
    from conftest import with_metadata

    from aiopt.artifacts.checks import onnx_checksum
    from aiopt.artifacts import load_model

    path = matmul_onnx(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    recorded = load_model(path).metadata["integrity"]["sha256"]
    assert onnx_checksum(model) == recorded
    with_metadata(path, tmp_path / "n.onnx", serving={"threads": 1})  # metadata edited by aiopt's own helper
    assert load_model(tmp_path / "n.onnx").integrity == "ok"
    damaged = matmul_onnx(tmp_path / "d.onnx", metadata={"integrity": "yes"})
    model = onnx.load(str(damaged))  # embed_metadata replaced it: a hand-written bad record instead
    for prop in model.metadata_props:
        prop.value = json.dumps({**json.loads(prop.value), "integrity": {"sha256": "zz"}})
    onnx.save(model, str(damaged))
    one_line(cli("inspect", str(damaged)), 2, "integrity")


def test_a_huge_input_shape_is_refused_and_a_given_size_is_honoured(tmp_path):
    from aiopt.artifacts import load_model
    from aiopt.specs import parse_input_shapes

    path = matmul_onnx(tmp_path / "m.onnx")
    one_line(cli("bench", str(path), "--input-shape", "batchx1000000000000", "-b", "1"), 2, "--input-shape", "GiB")
    # a model whose second axis is symbolic: the user's size replaces the symbol, not the other way round
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "s.onnx"))
    loaded = load_model(tmp_path / "s.onnx", input_spec=parse_input_shapes(["batchx77"]))
    assert loaded.input_spec[0].shape == ("batch", 77)
    one_line(cli("bench", str(tmp_path / "s.onnx"), "--input-shape", "batchx1000000000000", "-b", "1"), 2, "GiB")
