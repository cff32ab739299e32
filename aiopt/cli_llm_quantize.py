"""`aiopt quantize LM_FOLDER` (routed here by aiopt.cli.quantize): candidates of each runtime,
measured here, the winner written with its runtime named (aiopt.llm.quantize)."""
from __future__ import annotations

import contextlib
import sys
import warnings

from rich.markup import escape


def quantize_causal_lm_command(model: str, output: str | None, method: str, backend: str, calibration: str | None, calib_samples: int | None,
                               candidates: list[str] | None, batch_sizes: list[int] | None, max_perplexity_increase: float,
                               min_agreement: float, prompt_len: int, new_tokens: int, eval_tokens: int, force: bool, as_json: bool) -> None:
    from pathlib import Path

    from aiopt.cli import _emit_json, _say, stdout
    from aiopt.errors import InputError
    from aiopt.llm.quantize import LMQuantizeConfig, markdown_table, quantize_causal_lm

    if method != "auto":
        raise InputError(f"--method {method} is for classifier models; for a causal LM choose recipes with --candidate (e.g. ort-int4-b32, ov-int8-asym)")
    config = LMQuantizeConfig(backend=backend, candidates=tuple(candidates or ()), max_perplexity_increase=max_perplexity_increase,
                              min_agreement=min_agreement, calibration=calibration, calib_samples=32 if calib_samples is None else calib_samples,
                              batch_sizes=tuple(batch_sizes or (1,)), prompt_len=prompt_len, new_tokens=new_tokens, eval_tokens=eval_tokens)
    output = output or str(Path(model.rstrip("/")).with_name(Path(model.rstrip("/")).name + ".quant"))
    # torch.onnx and NNCF print progress on stdout, which carries only results here.
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = quantize_causal_lm(model, output, config, force=force, say=_say)
    if as_json:
        _emit_json(result)
        return
    report = result["quantize_report"]
    stdout.print(escape(markdown_table(report)), soft_wrap=True)
    quality = result["quality"]
    load = report["load_average"]
    stdout.print(escape(f"wrote {result['path']}: {result['recipe']} on {result['runtime']} ({result['recipe_description']}); perplexity "
                        f"{quality['perplexity']:.3f} ({quality['perplexity_increase'] * 100:+.2f}% vs FP32), agreement "
                        f"{quality['agreement_with_fp32']:.3f}. Load average {load[0]:.1f}: timings on a busy machine are not evidence of speed; "
                        "aiopt bench for figures."), soft_wrap=True)
