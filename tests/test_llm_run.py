"""`aiopt run` on a causal LM: token ids (an .npz) or texts (a .txt) through a prefill on the
artifact's runtime, the logits at every position written whole; the same logits on every runtime
the artifact runs on; bad input is one line with nothing written."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli
from llm_tiny import tiny_export, tiny_gpt

pytest.importorskip("transformers")


def _run(artifact, data, out, *extra):
    result = run_cli("run", str(artifact), "--input", str(data), "-o", str(out), "--json", *extra)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout), np.load(out)


def test_token_ids_give_the_same_logits_on_torch_onnxruntime_and_openvino(tmp_path):
    folder, _ = tiny_gpt()
    exported, _ = tiny_export()
    ids = np.random.default_rng(0).integers(0, 512, (2, 12))
    np.savez(tmp_path / "ids.npz", input_ids=ids)
    torch_doc, torch_out = _run(folder, tmp_path / "ids.npz", tmp_path / "torch.npz")
    ort_doc, ort_out = _run(exported, tmp_path / "ids.npz", tmp_path / "ort.npz")
    assert (torch_doc["backend"], ort_doc["backend"]) == ("torch", "onnxruntime")
    assert ort_out["logits"].shape == (2, 12, 512) and (ort_out["input_ids"] == ids).all()
    np.testing.assert_allclose(ort_out["logits"], torch_out["logits"], atol=1e-3)
    pytest.importorskip("openvino")
    ov_doc, ov_out = _run(exported, tmp_path / "ids.npz", tmp_path / "ov.npz", "--backend", "openvino")
    assert ov_doc["backend"] == "openvino"
    np.testing.assert_allclose(ov_out["logits"], ort_out["logits"], atol=1e-3)


def test_texts_of_any_length_are_tokenized_one_per_line(tmp_path):
    exported, _ = tiny_export()
    (tmp_path / "prompts.txt").write_text("The state of the Union\n\nis strong\n", encoding="utf-8")
    document, out = _run(exported, tmp_path / "prompts.txt", tmp_path / "out.npz")
    assert set(out.files) == {"input_ids.0", "logits.0", "input_ids.1", "logits.1"}
    assert out["logits.0"].shape[:2] == out["input_ids.0"].shape and out["input_ids.0"].shape[1] > out["input_ids.1"].shape[1]
    assert document["samples"] == 2


@pytest.mark.parametrize("arrays, says", [
    ({"x": np.zeros((1, 3), np.int64)}, "has no input_ids array (it has: x)"),
    ({"input_ids": np.zeros((1, 3), np.float32)}, "must be integer token ids"),
    ({"input_ids": np.full((1, 3), 10_000)}, "outside the vocabulary of 512"),
])
def test_bad_token_ids_are_one_line_and_nothing_written(tmp_path, arrays, says):
    exported, _ = tiny_export()
    np.savez(tmp_path / "bad.npz", **arrays)
    result = run_cli("run", str(exported), "--input", str(tmp_path / "bad.npz"), "-o", str(tmp_path / "out.npz"))
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and says in errors[0], result.stderr[-2000:]
    assert not (tmp_path / "out.npz").exists()
