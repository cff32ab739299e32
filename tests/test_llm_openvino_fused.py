"""OpenVINO candidates whose graph is converted from PyTorch (aiopt.llm.openvino_convert): attention
kept as one ScaledDotProductAttention op, which the CPU plugin fuses with the stateful KV cache,
and a `logits_start` input that limits a generation prefill's output layer to the last position.
Checked on a tiny Llama (the gpt reference architecture) built here: the compiled graph really
holds the fused node, the logits equal transformers' for a prefill and decode steps at batch 2,
and the recipes build from a KV-cache export's source folder."""
from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")
ov = pytest.importorskip("openvino")
pytest.importorskip("nncf")
torch = pytest.importorskip("torch")

from aiopt.errors import UnsupportedModelError  # noqa: E402
from aiopt.llm.causal_lm import Shape, load_causal_lm  # noqa: E402
from aiopt.llm.openvino_convert import convert_causal_lm  # noqa: E402
from aiopt.llm.openvino_stateful import OpenVINOStatefulCausalLM  # noqa: E402
from aiopt.llm.recipes_openvino import (  # noqa: E402
    FUSED_FP32,
    KV_CACHE_PRECISION,
    build_openvino,
    fused_recipes,
    open_ir,
    openvino_recipes,
    runtime_options_of,
)
from aiopt.llm.runners import TorchCausalLM  # noqa: E402
from aiopt.reference_models.gpt import GPTConfig, build_gpt  # noqa: E402


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A random 2-layer Llama (grouped-query attention, tied embeddings) saved as a Hugging Face folder."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    build_gpt(GPTConfig(vocab_size=300, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=96,
                        context_length=64)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def converted_ir(tiny_llama, tmp_path_factory):
    model, shape = convert_causal_lm(tiny_llama)
    path = tmp_path_factory.mktemp("fused") / "openvino_model.xml"
    ov.save_model(model, str(path), compress_to_fp16=False)
    return path, shape


def _runtime_layers(compiled) -> collections.Counter:
    return collections.Counter(op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ops())


def test_the_converted_graph_keeps_attention_whole_and_the_cpu_plugin_fuses_it_with_the_cache(converted_ir):
    path, shape = converted_ir
    model = ov.Core().read_model(str(path))
    ops = collections.Counter(op.get_type_name() for op in model.get_ops())
    assert ops["ScaledDotProductAttention"] == shape.layers and ops["Softmax"] == 0
    assert ops["ReadValue"] == ops["Assign"] == 2 * shape.layers  # stateful: no past/present ports
    assert {port.get_any_name() for port in model.inputs} == {"input_ids", "attention_mask", "position_ids", "beam_idx", "logits_start"}
    layers = _runtime_layers(ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": 1, KV_CACHE_PRECISION: "f32"}))
    # one attention node per layer, no MatMul left for Q.K or P.V (the ONNX export's graph keeps 2 a layer)
    assert layers["ScaledDotProductAttention"] == shape.layers and layers["MatMul"] == 0, layers


def test_the_converted_graph_gives_transformers_logits_through_prefill_and_decode_at_batch_2(tiny_llama, converted_ir):
    path, shape = converted_ir
    model, _ = load_causal_lm(tiny_llama)
    reference = TorchCausalLM(model, shape)
    lm = OpenVINOStatefulCausalLM(path, shape, threads=1, options={KV_CACHE_PRECISION: "f32"})
    assert lm.takes_beam_idx and lm.takes_logits_start
    ids = np.random.default_rng(0).integers(0, shape.vocab_size, (2, 14))
    expected, state_t = reference.prefill(ids[:, :9])
    logits, state = lm.prefill(ids[:, :9])
    assert logits.shape == expected.shape and np.abs(logits - expected).max() < 1e-4  # every position: what perplexity reads
    last, _ = lm.prefill(ids[:, :9], last_only=True)
    assert last.shape == (2, 1, shape.vocab_size) and np.abs(last - expected[:, -1:]).max() < 1e-4  # logits_start = -1
    for position in range(9, 14):
        expected, state_t = reference.step(ids[:, position:position + 1], state_t)
        logits, state = lm.step(ids[:, position:position + 1], state)
        assert np.abs(logits - expected).max() < 1e-4, position
    assert state[1] == 14


def test_an_int8_cache_acts_in_the_fused_node_on_decode_steps_only(converted_ir):
    """KV_CACHE_PRECISION=u8 changes the logits of steps that read the cache back, a little, and
    not those of the prefill (computed from the fresh keys): the option reaches the fused node."""
    path, shape = converted_ir
    ids = np.random.default_rng(1).integers(0, shape.vocab_size, (1, 20))
    runs = {}
    for precision in ("f32", "u8"):
        lm = OpenVINOStatefulCausalLM(path, shape, threads=1, options={KV_CACHE_PRECISION: precision})
        first, state = lm.prefill(ids[:, :12], last_only=True)
        steps = []
        for position in range(12, 20):
            logits, state = lm.step(ids[:, position:position + 1], state)
            steps.append(logits)
        runs[precision] = first, np.concatenate(steps, axis=1)
    assert np.abs(runs["f32"][0] - runs["u8"][0]).max() < 1e-4
    difference = np.abs(runs["f32"][1] - runs["u8"][1]).max()
    assert 1e-5 < difference < 0.2, difference


def test_fused_recipes_build_from_the_exports_source_folder_and_reopen_with_their_options(tiny_llama, tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    (export / "aiopt.json").write_text(json.dumps({"source_folder": str(tiny_llama)}))
    shape = Shape.from_config(json.loads((tiny_llama / "config.json").read_text()))
    offered = {r.name for r in fused_recipes(int8_units=True, bf16=True)}
    assert {"ov-int8-asym-fused", "ov-int8-asym-fused-dq32", "ov-int8-asym-fused-bf16-dq32-kv-u8"} <= offered
    assert not {r.name for r in fused_recipes(int8_units=False)} & {"ov-int8-asym-fused-dq32", "ov-int8-asym-fused-bf16-dq32-kv-u8"}
    recipe = next(r for r in fused_recipes(int8_units=False) if r.name == "ov-int8-asym-fused")
    assert "converted from PyTorch" in recipe.describe()
    xml = build_openvino(recipe, export / "model.onnx", tmp_path / recipe.name, None, shape)
    assert (tmp_path / FUSED_FP32 / "openvino_model.xml").is_file()  # converted once, read by every recipe of this graph
    assert runtime_options_of(xml) == {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0", KV_CACHE_PRECISION: "f32"}
    lm = open_ir(xml, shape, 1, "f32")
    assert isinstance(lm, OpenVINOStatefulCausalLM) and lm.takes_beam_idx
    model, _ = load_causal_lm(tiny_llama)
    ids = np.random.default_rng(2).integers(0, shape.vocab_size, (1, 10))
    expected, _ = TorchCausalLM(model, shape).prefill(ids)
    logits, _ = lm.prefill(ids)
    error = np.abs(logits - expected).max()
    assert 0 < error < 0.05, error  # INT8 weights: near FP32, not equal to it
    (export / "aiopt.json").write_text(json.dumps({"source_folder": str(tmp_path / "gone")}))
    with pytest.raises(UnsupportedModelError, match="needs the Hugging Face folder"):
        build_openvino(recipe, export / "model.onnx", tmp_path / "elsewhere" / recipe.name, None, shape)


@pytest.mark.slow  # a torch.onnx export: a minute on a shared machine
def test_the_onnx_graph_candidates_also_slice_the_output_layer_in_a_generation_prefill(tiny_llama, tmp_path):
    """OpenVINO's ONNX reader folds the export's `logits_start` (an input with a default) into a
    constant; build_openvino makes it an input again, so `ov-int8-asym` and its siblings compute a
    generation prefill's output layer on the last position only, as the ONNX Runtime runner does."""
    from aiopt.llm.export_kv import export_causal_lm_onnx
    from aiopt.llm.runners import OpenVINOCausalLM

    export = export_causal_lm_onnx(tiny_llama, tmp_path / "export")
    shape = Shape.from_config(json.loads((tiny_llama / "config.json").read_text()))
    recipe = next(r for r in openvino_recipes(bf16=False, calibrated=False, int8_units=False) if r.name == "ov-int8-asym")
    xml = build_openvino(recipe, Path(export["onnx"]), tmp_path / recipe.name, None, shape)
    lm = open_ir(xml, shape, 1, "f32")
    assert isinstance(lm, OpenVINOCausalLM) and lm.takes_logits_start
    ids = np.random.default_rng(3).integers(0, shape.vocab_size, (2, 11))
    whole, _ = lm.prefill(ids)
    last, state = lm.prefill(ids, last_only=True)
    assert whole.shape == (2, 11, shape.vocab_size) and last.shape == (2, 1, shape.vocab_size)
    assert np.abs(whole[:, -1:] - last).max() < 1e-5
    step, _ = lm.step(ids[:, :1], state)  # a decode step after the sliced prefill reads the whole cache
    assert step.shape == (2, 1, shape.vocab_size) and np.isfinite(step).all()


@pytest.mark.slow  # a quantize run of gpt:tiny (export, conversion, two builds, scoring): minutes on a shared machine
def test_quantize_measures_the_fused_candidates_and_generate_reopens_the_winner(tmp_path):
    from conftest import run_cli
    from llm_tiny import tiny_gpt

    folder, _ = tiny_gpt()
    out = tmp_path / "q"
    result = run_cli("quantize", str(folder), "-o", str(out), "--backend", "openvino", "--candidate", "ov-int8-asym-fused",
                     "--candidate", "ov-int8-asym-fused-kv-u8", "--prompt-len", "16", "--new-tokens", "4", "--eval-tokens", "512",
                     "--max-perplexity-increase", "1", "--min-agreement", "0", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads(result.stdout)
    rows = {r["name"]: r for r in document["quantize_report"]["candidates"]}
    for name in ("ov-int8-asym-fused", "ov-int8-asym-fused-kv-u8"):
        row = rows[name]
        assert row["status"] == "measured", row
        assert row["perplexity_increase"] < 0.02 and row["decode_agreement"] > 0.9, row  # INT8 weights, its cache read back right
    if document["runtime"] == "openvino":  # a fused winner (FP32 on ONNX Runtime may still decode gpt:tiny faster)
        assert document["openvino_runtime_options"]["KV_CACHE_PRECISION"] in ("f32", "u8")
    generated = run_cli("generate", str(out), "--prompt", "My fellow Americans", "-n", "6", "--json")
    assert generated.returncode == 0, generated.stderr[-2000:]
