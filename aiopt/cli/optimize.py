"""`aiopt optimize`: search chains of steps with Optuna (aiopt.optimize) and show the chosen one."""
from __future__ import annotations

from dataclasses import replace
from typing import List, Optional

import typer
from rich.markup import escape

from aiopt.cli.app import command
from aiopt.cli.options import JSON_OPTION, SEED_OPTION, SEQ_LEN_OPTION
from aiopt.cli.render import emit_json, stderr, stdout
from aiopt.optimize.config import DEFAULT_CHAIN_ACCURACY_BUDGET, TRIAL_LATENCY, OptimizeConfig, parse_duration, time_budget_from
from aiopt.optimize.search import optimize as run_optimize


@command(epilog="Example: aiopt optimize cnn.pt --max-accuracy-drop 0.01 -b 1 -b 64 --time-budget 20m -o cnn-opt/")
def optimize(
    model: str = typer.Argument(..., help="The model: an aiopt checkpoint (prune and distill join the search), ONNX or a Hugging Face folder (a causal LM: quantize's LM candidates, decode tokens/s under a perplexity budget)."),
    output: str = typer.Option(..., "--output", "-o", help="Folder for the chosen artifact, the candidates, the reports and the study."),
    target: str = typer.Option("cpu", "--target", help="cpu or cuda (no GPU: exit 4)."),
    max_accuracy_drop: Optional[float] = typer.Option(None, "--max-accuracy-drop", help=f"Budget for class outputs: accuracy lost on held-out data (default {DEFAULT_CHAIN_ACCURACY_BUDGET:g} = one point)."),
    min_cosine: Optional[float] = typer.Option(None, "--min-cosine", help="Budget for embeddings and other continuous outputs: mean cosine similarity to FP32."),
    max_perplexity_increase: Optional[float] = typer.Option(None, "--max-perplexity-increase", help="Budget for a causal LM: perplexity over FP32's on held-out text (default 0.02 = 2%)."),
    objective: str = typer.Option("latency", "--objective", help="latency (all batch sizes), throughput (the largest) or size."),
    batch_size: Optional[List[int]] = typer.Option(None, "--batch-size", "-b", help="Batch sizes timed (repeatable; default 1 and 64)."),
    time_budget: Optional[str] = typer.Option(None, "--time-budget", help="Wall-clock budget: 90s, 20m, 1h (default 20m unless --trials is given)."),
    trials: Optional[int] = typer.Option(None, "--trials", help="Finished trials the study should hold; a re-run adds only the missing ones."),
    storage: Optional[str] = typer.Option(None, "--storage", envvar="AIOPT_STORAGE", show_envvar=True,
                                          help="Optuna storage URL shared by several workers (sqlite:///s.db, postgresql://user:pass@host/db); default: a journal file in OUTDIR. Read from AIOPT_STORAGE when not given, so the password stays off the command line."),
    storage_timeout: str = typer.Option("5m", "--storage-timeout", help="How long a worker waits for an unreachable --storage server before it ends (exit 2): 90s, 5m."),
    heartbeat: int = typer.Option(30, "--heartbeat", help="Seconds between a worker's heartbeats in --storage; a worker silent for 4 of them is taken as dead and its trial is run again by another."),
    study: Optional[str] = typer.Option(None, "--study", help="Study name in --storage."),
    keep: str = typer.Option("pareto", "--keep", help="Candidate artifacts kept: pareto (the front) or all."),
    try_chain: Optional[List[str]] = typer.Option(None, "--try", help="A chain to try first, e.g. prune=0.5,distill=0.45,quantize=int8-dynamic (repeatable)."),
    sampler: str = typer.Option("tpe", "--sampler", help="Optuna sampler: tpe or nsga2."),
    finetune_epochs: Optional[int] = typer.Option(None, "--finetune-epochs", help="Fine-tuning epochs after pruning (default: a third of the model's recipe)."),
    distill_epochs: Optional[int] = typer.Option(None, "--distill-epochs", help="Distillation epochs (default: the student's recipe)."),
    data: Optional[str] = typer.Option(None, "--data", help="Held-out data for quality: .npz, .txt, mnist1d or digits (default: the model's test split)."),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="Calibration data for static INT8: .npz, .txt, mnist1d or digits (default: the model's training split)."),
    seq_len: int = SEQ_LEN_OPTION,
    min_time: float = typer.Option(0.6, "--min-time", help="Seconds of timed runs per artifact and batch size, at least."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Threads for the runtimes (default: all cores)."),
    seed: int = SEED_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Search chains of steps (distill, prune, quantize recipe and runtime) with Optuna for the fastest artifact within a quality budget."""
    config = OptimizeConfig(target=target, max_accuracy_drop=max_accuracy_drop, min_cosine=min_cosine, objective=objective,
                            batch_sizes=tuple(batch_size or (1, 64)), time_budget=time_budget_from(time_budget, trials), trials=trials,
                            storage=storage, storage_timeout=parse_duration(storage_timeout, "--storage-timeout"), heartbeat=heartbeat,
                            study=study, keep=keep, sampler=sampler, seed=seed, finetune_epochs=finetune_epochs,
                            distill_epochs=distill_epochs, data=data, calibration=calibration, seq_len=seq_len, tries=tuple(try_chain or ()), threads=threads,
                            max_perplexity_increase=max_perplexity_increase,
                            latency=replace(TRIAL_LATENCY, min_time=min_time))
    with stderr.status("optimize: starting") as status:  # the steps' progress, replaced as it goes; one kept line per trial
        result = run_optimize(model, output, config, on_trial=lambda event: stderr.print(escape(event["line"]), soft_wrap=True),
                              say=lambda message: stderr.print(f"[dim]{escape(message)}[/]", soft_wrap=True),
                              on_step=lambda message: status.update(f"optimize: {escape(message)}"))
    document = result.document
    if as_json:
        emit_json(document)
    else:
        best = document["best"]
        if best:
            speed = ", ".join(f"{v:.2f}x at batch {b}" for b, v in best["speedup"].items())
            stdout.print(f"chosen: trial {best['trial']} ({escape(best['chain'])}) on {best['runtime']} -> {escape(best['artifact'])}: "
                         f"{speed} vs FP32 ONNX Runtime, {escape(document['budget']['rule'])}")
        stdout.print(f"report: {escape(str(result.outdir / 'report.html'))}" + (f"; rebuild: {escape(str(result.outdir / 'reproduce.sh'))}" if best else ""))
    result.raise_if_failed()
