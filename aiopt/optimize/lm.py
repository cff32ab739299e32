"""`aiopt optimize LM_FOLDER`: an Optuna study whose trials are `aiopt quantize`'s causal-LM
candidates (ONNX Runtime MatMulNBits, OpenVINO NNCF, llama.cpp GGUF), each built and measured by
aiopt.llm.quantize.Measurement exactly as quantize measures it, scored by decode tokens/s at
batch 1 under the perplexity budget (0 when over it). Structural steps (pruning, distillation of
a language model) are not in the space yet. The choice is quantize's own rule: the fastest within
the budget and faster than FP32, FP32 when none is faster.

    OUTDIR/best/        the chosen artifact (its aiopt.json names the runtime)
    OUTDIR/report.json, report.md, report.html
"""
from __future__ import annotations

import html
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from aiopt.errors import InputError
from aiopt.fileio import write_bytes_atomic
from aiopt.lazy import optional_import
from aiopt.llm.causal_lm import is_causal_lm_folder
from aiopt.folder_io import check_output_folder
from aiopt.llm.quantize import (LMQuantizeConfig, Measurement, Row, build_report, floor_failures, kv_export_metadata, markdown_table, select_winner,
                                write_winner)
from aiopt.optimize.config import OptimizeConfig
from aiopt.optimize.report import write_json

PARAM = "recipe"


def is_causal_lm_input(model) -> bool:
    """A causal-LM Hugging Face folder or an aiopt KV-cache export of one."""
    path = Path(model)
    return path.is_dir() and (is_causal_lm_folder(path) or kv_export_metadata(path) is not None)


def lm_config(config: OptimizeConfig) -> LMQuantizeConfig:
    """quantize's settings for the study: its defaults, optimize's budget, threads and calibration, batch 1."""
    if config.max_accuracy_drop is not None or config.min_cosine is not None:
        raise InputError("a causal LM is judged by perplexity; pass --max-perplexity-increase (0.02 = 2%) instead of "
                         "--max-accuracy-drop/--min-cosine")
    base = config.lm or LMQuantizeConfig()
    budget = base.max_perplexity_increase if config.max_perplexity_increase is None else config.max_perplexity_increase
    return replace(base, max_perplexity_increase=budget, threads=config.threads or base.threads,
                   calibration=config.calibration or base.calibration, batch_sizes=(1,))


def optimize_causal_lm(model, outdir: Path, config: OptimizeConfig, on_trial: Callable[[dict], None], say: Callable[[str], None],
                       start: float) -> tuple[dict, str | None, str | None]:
    """Measure FP32, then one candidate per trial until every candidate is measured, --trials is
    reached or the time budget is spent; write the choice and the reports. Returns (the report
    document, the chosen artifact's path, the problem when none is within the budget)."""
    optuna = optional_import("optuna", "aiopt optimize", "Optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = lm_config(config)
    deadline = start + config.time_budget if config.time_budget else None
    work = outdir / "trials"
    work.mkdir(parents=True, exist_ok=True)
    measurement = Measurement(model, work, settings, say)
    recipes, skipped = measurement.recipes()
    by_name = {recipe.name: recipe for recipe in recipes}
    say(f"search space: {len(recipes)} causal-LM quantize recipes; budget: perplexity at most +{settings.max_perplexity_increase * 100:g}% "
        f"and greedy agreement at least {settings.min_agreement:g} vs FP32; objective: decode tokens/s at batch 1")
    reference = measurement.start()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=config.seed))
    rows: dict[str, Row] = {}
    limit = min(config.trials or len(recipes), len(recipes))
    while len(rows) < limit and (deadline is None or time.monotonic() < deadline):
        trial = study.ask()
        name = trial.suggest_categorical(PARAM, list(by_name))
        if name in rows:  # the sampler asked again for a measured recipe: tell it the same score, ask for an untried one next
            study.tell(trial, _score(rows[name], settings))
            untried = [n for n in by_name if n not in rows]
            study.enqueue_trial({PARAM: untried[(config.seed + len(rows)) % len(untried)]})
            continue
        row = rows[name] = measurement.measure(by_name[name])
        value = _score(row, settings)
        study.tell(trial, value)
        on_trial({"trial": trial.number, "recipe": name, "value": value,
                  "line": f"trial {trial.number}: {name}: " + (f"{row.tokens_per_s():.1f} tok/s, perplexity {row.perplexity_increase * 100:+.2f}%"
                                                               if row.status == "measured" else f"{row.status}: {row.why}")})
    stopped = "" if len(rows) == len(recipes) else f"; {len(recipes) - len(rows)} recipe(s) not tried (--trials or --time-budget)"
    measured = [reference, *rows.values()]
    measurement.confirm(measured)
    winner = select_winner(measured, settings)
    report = build_report(measured + skipped, winner, settings, measurement)
    best, problem = None, None
    if winner is None:
        problem = f"no candidate is within the perplexity budget (+{settings.max_perplexity_increase * 100:g}%){stopped}; loosen --max-perplexity-increase"
    else:
        out = check_output_folder(outdir / "best", model, force=True)
        metadata = write_winner(winner, measurement.export, out, report, model)
        trial = next((n for n, r in enumerate(rows.values()) if r is winner), None)
        best = {"trial": trial, "chain": winner.name, "runtime": metadata["runtime"], "artifact": str(out),
                "speedup": {str(settings.batch_sizes[0]): winner.tokens_per_s() / reference.tokens_per_s()}, "quality": metadata["quality"]}
    rule = (f"perplexity at most +{settings.max_perplexity_increase * 100:g}% and agreement at least {settings.min_agreement:g} vs FP32 "
            f"(over all positions and over decode steps through the KV cache; decode tokens/s vs FP32 ONNX Runtime){stopped}")
    document = {"model": str(model), "kind": "causal-lm", "best": best, "budget": {"rule": rule}, "quantize_report": report, "problem": problem,
                "trials": [{"recipe": name, "value": _score(row, settings)} for name, row in rows.items()]}
    write_json(outdir / "report.json", document)
    table = markdown_table(report)
    write_bytes_atomic(outdir / "report.md", f"# aiopt optimize {model}\n\n{rule}\n\n{table}".encode())
    write_bytes_atomic(outdir / "report.html", f"<!doctype html><title>aiopt optimize</title><h1>aiopt optimize {html.escape(str(model))}</h1>"
                       f"<p>{html.escape(rule)}</p><pre>{html.escape(table)}</pre>\n".encode())
    return document, best["artifact"] if best else None, problem


def _score(row: Row, settings: LMQuantizeConfig) -> float:
    """Decode tokens/s at batch 1 within the budget, else 0."""
    if row.status != "measured":
        return 0.0
    return 0.0 if floor_failures(row, settings) else float(row.tokens_per_s() or 0.0)
