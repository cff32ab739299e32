"""Loading every format, detected by content; refusing what would run code."""
import builtins
import os
import pickle
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from aiopt.artifacts import FORMAT_AIOPT, FORMAT_EXPORT, FORMAT_ONNX, FORMAT_PICKLE, FORMAT_TORCHSCRIPT, load_model
from aiopt.errors import InputError, UnsafeFileError
from aiopt.fileio import atomic_path, check_output_path
from aiopt.inspect import inspect_artifact
from aiopt.specs import parse_input_shapes


class FileCreatingPayload:
    """Unpickling this creates a file: proof of whether a loader ran the pickle's code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def _tiny_module():
    return torch.nn.Sequential(torch.nn.Linear(40, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10)).eval()


def test_aiopt_checkpoint(tiny_cnn):
    loaded = load_model(tiny_cnn)
    assert loaded.format == FORMAT_AIOPT
    assert loaded.model(torch.randn(2, 40)).shape == (2, 10)


def test_format_comes_from_content_not_name(tiny_cnn, tmp_path):
    renamed = tmp_path / "model.onnx"
    shutil.copy(tiny_cnn, renamed)
    assert load_model(renamed).format == FORMAT_AIOPT


def test_torchscript(tmp_path):
    path = tmp_path / "m.bin"
    torch.jit.save(torch.jit.trace(_tiny_module(), torch.randn(1, 40)), str(path))
    loaded = load_model(path)
    assert loaded.format == FORMAT_TORCHSCRIPT and loaded.input_spec == []
    info = inspect_artifact(path, input_spec=parse_input_shapes(["1x40"]))
    assert info["inputs"][0]["shape"] == ["batch", 40]
    assert info["outputs"][0]["shape"] == ["batch", 10]
    assert info["params"] == 40 * 16 + 16 + 16 * 10 + 10


def test_torch_export_program_knows_its_inputs(tmp_path):
    path = tmp_path / "m.pt2"
    program = torch.export.export(_tiny_module(), (torch.randn(2, 40),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path))
    loaded = load_model(path)
    assert loaded.format == FORMAT_EXPORT
    assert [s.shape for s in loaded.input_spec] == [("batch", 40)]
    assert loaded.model(torch.randn(3, 40)).shape == (3, 10)


def _onnx_model(initializer: onnx.TensorProto | None = None) -> onnx.ModelProto:
    weight = initializer or numpy_helper.from_array(np.ones((40, 10), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 40])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx(tmp_path):
    path = tmp_path / "m.weights"
    onnx.save(_onnx_model(), str(path))
    info = inspect_artifact(path)
    assert info["format"] == FORMAT_ONNX and info["params"] == 400
    assert info["inputs"] == [{"name": "x", "shape": ["batch", 40], "dtype": "float32"}]


def test_onnx_external_data_outside_folder_is_refused(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(400, np.float32).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    weight = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[40, 10])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "1600")):
        weight.external_data.add(key=key, value=value)
    path = folder / "m.onnx"
    path.write_bytes(_onnx_model(weight).SerializeToString())
    with pytest.raises(UnsafeFileError, match="outside the model's folder"):
        load_model(path)


RANDOM_BYTES = bytes((i * 131 + 7) % 251 for i in range(4096))  # fixed, so the test cannot flake


@pytest.mark.parametrize("content", [b"", b"\x00" * 10, RANDOM_BYTES, b"PK\x03\x04truncated", b"\x80\x05garbage"],
                         ids=["empty", "zeros", "random", "zip-header", "pickle-header"])
def test_garbage_is_not_a_model(tmp_path, content):
    path = tmp_path / "m.pt"
    path.write_bytes(content)
    with pytest.raises(InputError, match="not a valid"):
        load_model(path)


def test_truncated_checkpoint(tiny_cnn, tmp_path):
    data = tiny_cnn.read_bytes()
    path = tmp_path / "m.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="not a valid"):
        load_model(path)


def test_missing_path_and_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_model(tmp_path / "nope.pt")
    with pytest.raises(InputError, match="is a folder"):
        load_model(tmp_path)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_code_running_pickle_is_refused_and_never_runs(tmp_path, writer):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save(FileCreatingPayload(marker), path)
    else:
        path.write_bytes(pickle.dumps(FileCreatingPayload(marker)))
    with pytest.raises(UnsafeFileError, match="run code"):
        load_model(path)
    assert not marker.exists()
    # The opt-in really unpickles (and so runs the payload): the flag is the only gate.
    with pytest.raises(InputError, match="not a torch.nn.Module"):
        load_model(path, trust_pickle=True)
    assert marker.exists()


def test_pickled_module_loads_only_with_opt_in(tmp_path):
    path = tmp_path / "module.pt"
    torch.save(_tiny_module(), path)
    with pytest.raises(UnsafeFileError, match="--trust-pickle"):
        load_model(path)
    loaded = load_model(path, trust_pickle=True, input_spec=parse_input_shapes(["1x40"]))
    assert loaded.format == FORMAT_PICKLE and loaded.model(torch.randn(1, 40)).shape == (1, 10)


def test_bare_state_dict_explains_what_is_missing(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(_tiny_module().state_dict(), path)
    with pytest.raises(InputError, match="bare state_dict"):
        load_model(path)


def test_input_shape_must_match_known_spec(tiny_cnn):
    with pytest.raises(InputError, match="expected x: batchx40 float32, got x: batchx41"):
        load_model(tiny_cnn, input_spec=parse_input_shapes(["1x41"]))


@pytest.mark.parametrize("text", ["", "1x", "axb", "1x-3", "0x40"])
def test_malformed_input_shape(text):
    with pytest.raises(InputError, match="malformed"):
        parse_input_shapes([text])


def test_named_input_shapes_for_several_inputs():
    specs = parse_input_shapes(["input_ids:1x128", "attention_mask:1x128"], ["int64"])
    assert [(s.name, s.shape, s.dtype) for s in specs] == [("input_ids", ("batch", 128), "int64"), ("attention_mask", ("batch", 128), "int64")]


def test_output_path_checks(tmp_path):
    source = tmp_path / "in.pt"
    source.write_bytes(b"x")
    with pytest.raises(InputError, match="is the input file"):
        check_output_path(source, source, force=True)
    with pytest.raises(InputError, match="does not exist"):
        check_output_path(tmp_path / "no" / "out.pt")
    with pytest.raises(InputError, match="is a folder"):
        check_output_path(tmp_path)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def _rewrite_zip(source, target, transform):
    """Copy a zip archive member by member through `transform(name, data) -> [(name, data), ...]`."""
    import zipfile

    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for name in src.namelist():
            for new_name, data in transform(name, src.read(name)):
                dst.writestr(new_name, data)


def _payload_bytes(marker) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(FileCreatingPayload(marker), buffer)
    return buffer.getvalue()


@pytest.fixture
def good_pt2(tmp_path):
    path = tmp_path / "good.pt2"
    torch.export.save(torch.export.export(_tiny_module(), (torch.randn(2, 40),)), str(path))
    return path


def _case_renamed_sample_inputs(marker):
    def transform(name, data):
        if name.endswith("sample_inputs/model.pt"):
            return [(name[:-3] + ".PT", _payload_bytes(marker))]
        return [(name, data)]
    return transform


def _case_duplicate_config(marker):
    def transform(name, data):
        if name.endswith("weights/model_weights_config.json"):
            top, rest = name.split("/", 1)
            return [(name, data), (f"{top}/{rest.upper()}", data.replace(b'"use_pickle": false', b'"use_pickle": true'))]
        if name.endswith("weights/weight_0"):
            return [(name, _payload_bytes(marker))]
        return [(name, data)]
    return transform


def _case_top_level_member(marker):
    def transform(name, data):
        return [(name, data)] + ([("stray", b"x")] if name.endswith("archive_format") else [])
    return transform


@pytest.mark.parametrize("craft", [_case_renamed_sample_inputs, _case_duplicate_config, _case_top_level_member],
                         ids=["upper-case-sample-inputs", "case-duplicate-config", "top-level-member"])
def test_crafted_pt2_cannot_smuggle_a_pickle(good_pt2, tmp_path, craft):
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.pt2"
    _rewrite_zip(good_pt2, evil, craft(marker))
    with pytest.raises(UnsafeFileError):
        load_model(evil)
    assert not marker.exists()


def test_pt2_with_pickled_weights_is_refused(good_pt2, tmp_path):
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.pt2"

    def transform(name, data):
        if name.endswith("weights/model_weights_config.json"):
            return [(name, data.replace(b'"use_pickle": false', b'"use_pickle": true', 1))]
        if name.endswith("weights/weight_0"):
            return [(name, _payload_bytes(marker))]
        return [(name, data)]

    _rewrite_zip(good_pt2, evil, transform)
    with pytest.raises(UnsafeFileError, match="use_pickle|unpickled"):
        load_model(evil)
    assert not marker.exists()


def test_onnx_with_external_data_loads_from_any_working_directory(tmp_path, monkeypatch):
    folder = tmp_path / "ext"
    folder.mkdir()
    onnx.save(_onnx_model(), str(folder / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.data", size_threshold=0)
    monkeypatch.chdir(tmp_path)
    assert load_model("ext/m.onnx").format == FORMAT_ONNX


def test_written_artifacts_follow_the_umask(tmp_path):
    target = tmp_path / "out.bin"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"data")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
