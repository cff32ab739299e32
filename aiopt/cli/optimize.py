"""`aiopt optimize`: search chains of steps with Optuna (aiopt.optimize) and show the chosen one."""
from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape

from aiopt.cli.app import command
from aiopt.cli.options import JSON_OPTION, config_from, config_options
from aiopt.cli.render import emit_json, stderr, stdout
from aiopt.optimize.config import OptimizeConfig, time_budget_from
from aiopt.optimize.search import optimize as run_optimize


@command(epilog="Example: aiopt optimize cnn.pt --max-accuracy-drop 0.01 -b 1 -b 64 --time-budget 20m -o cnn-opt/")
@config_options(OptimizeConfig)
def optimize(
    model: str = typer.Argument(..., help="The model: an aiopt checkpoint (prune and distill join the search), ONNX or a Hugging Face folder (a causal LM: quantize's LM candidates, decode tokens/s under a perplexity budget)."),
    output: str = typer.Option(..., "--output", "-o", help="Folder for the chosen artifact, the candidates, the reports and the study."),
    as_json: bool = JSON_OPTION,
    **options: Any,
) -> None:
    """Search chains of steps (distill, prune, quantize recipe and runtime) with Optuna for the fastest artifact within a quality budget."""
    config = optimize_config(options)
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


def optimize_config(options: dict[str, Any]) -> OptimizeConfig:
    """The config from the command's options: without --time-budget, --trials alone bounds the search."""
    return config_from(OptimizeConfig, options, time_budget=time_budget_from(options["time_budget"], options["trials"]))
