"""What the commands do differently for a causal language model: `export` with a KV cache,
`quantize` by weight-only recipes of each runtime, `bench` in tokens per second, and inspect's
rows. The commands route here; `aiopt generate` is in aiopt.cli.generate."""
from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path

from rich.markup import escape

from aiopt.artifacts import command_line
from aiopt.bench.report import ReportConfig, append_github_summary, load_report, to_json
from aiopt.cli.options import config_from
from aiopt.cli.render import emit_json, say, stdout
from aiopt.errors import CheckFailedError, InputError
from aiopt.fileio import check_output_path, human_size, write_bytes_atomic
from aiopt.bench.generative import GenerativeBenchConfig, compare_generative, html_page, markdown, run_generative_bench
from aiopt.llm.quantize import LMQuantizeConfig, markdown_table, quantize_causal_lm


@contextlib.contextmanager
def _quiet_stdout():
    """torch.onnx and NNCF print progress on stdout, which carries only results here."""
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def export_causal_lm(folder: str, output: str, exporter: str, opset: int, force: bool, as_json: bool) -> None:
    """`aiopt export FOLDER --format onnx` for a causal LM: ONNX with past key/values, validated."""
    # imported here, not at the top: the KV-cache export imports torch, which `aiopt --help` must not load
    from aiopt.llm.export_kv import KVExportConfig, export_causal_lm_onnx

    with _quiet_stdout():
        result = export_causal_lm_onnx(folder, output, KVExportConfig(exporter=exporter, opset=opset), force=force, say=say)
    if as_json:
        emit_json(result)
        return
    check = result["validation"]
    stdout.print(escape(f"exported {result['onnx']} with a KV cache of {result['kv_cache']['layers']} layers ({result['exporter']}); "
                        f"vs transformers over a {check['prefill_tokens']}-token prefill and {check['decode_steps']} decode steps: "
                        f"max abs logit diff {check['max_abs_diff']:.2e} (tolerance {check['tolerance']:g}), "
                        f"greedy agreement {check['greedy_agreement']:.2f}"))


def causal_lm_rows(table, info: dict) -> None:
    """inspect's rows for a causal LM: geometry and memory."""
    table.add_row("causal LM", escape(f"{info['architecture']}: {info['layers']} layers, {info['heads']} heads, {info['kv_heads']} KV heads "
                                      f"(head dim {info['head_dim']}), hidden {info['hidden_size']}"))
    table.add_row("context / vocabulary", f"{info['context_length']} tokens / {info['vocab_size']:,}"
                  + (" (embedding tied to the output layer)" if info["tied_embeddings"] else ""))
    if info["weights_bytes"] is not None:
        table.add_row("weights", f"{info['params']:,} parameters, {human_size(info['weights_bytes'])} ({info['weights_dtype']})")
    table.add_row("KV cache", f"{human_size(info['kv_cache_bytes_per_token'])} per token, {human_size(info['kv_cache_bytes'])} for "
                  f"{info['kv_cache_tokens']} tokens (batch 1, {info['kv_cache_dtype']})")


def bench_generative(artifacts: list[str], config: GenerativeBenchConfig, report: ReportConfig, force: bool, backends: tuple[str, ...] = ()) -> None:
    """`aiopt bench` when every artifact is a generative model (aiopt.bench.generative); with a
    baseline report (a previous generative --json), every figure beside the baseline's and exit 1 on a regression."""
    outputs = {name: check_output_path(path, *artifacts, force=force) for name, path in report.files().items()}
    baseline = report.baseline_report
    previous = load_report(baseline, kind="generative") if baseline else None  # a bad baseline fails before the minutes of measuring
    if report.max_regression < 0 or report.max_accuracy_drop < 0:
        raise InputError("--max-regression and --max-accuracy-drop must not be negative")
    config.check()
    document = run_generative_bench(artifacts, config, command=command_line(), say=say, runtimes=backends)
    violations = None
    if previous is not None:
        document["baseline"], violations = compare_generative(document, previous, report.max_regression, report.max_accuracy_drop, source=baseline)
    text = markdown(document, violations)
    if "json" in outputs:
        write_bytes_atomic(outputs["json"], to_json(document).encode())
    if "markdown" in outputs:
        write_bytes_atomic(outputs["markdown"], text.encode())
    if "html" in outputs:
        write_bytes_atomic(outputs["html"], html_page(document, violations).encode())
    append_github_summary(text)
    stdout.print(escape(text), soft_wrap=True)
    if violations:
        raise CheckFailedError(f"{len(violations)} regression(s) against {baseline}: " + "; ".join(v.describe() for v in violations))


def quantize_causal_lm_command(model: str, output: str | None, options: dict, force: bool, as_json: bool) -> None:
    """`aiopt quantize LM_FOLDER`: candidates of each runtime, measured here, the winner written with its runtime named.
    `options` are the quantize command's: those named as LMQuantizeConfig's fields set it (the rest are the classifier's)."""
    if options["method"] != "auto":
        raise InputError(f"--method {options['method']} is for classifier models; for a causal LM choose recipes with --candidate "
                         "(e.g. ort-int4-b32, ov-int8-asym)")
    config = config_from(LMQuantizeConfig, options)
    output = output or str(Path(model.rstrip("/")).with_name(Path(model.rstrip("/")).name + ".quant"))
    with _quiet_stdout():
        result = quantize_causal_lm(model, output, config, force=force, say=say)
    if as_json:
        emit_json(result)
        return
    report = result["quantize_report"]
    stdout.print(escape(markdown_table(report)), soft_wrap=True)
    quality = result["quality"]
    load = report["load_average"]
    stdout.print(escape(f"wrote {result['path']}: {result['recipe']} on {result['runtime']} ({result['recipe_description']}); perplexity "
                        f"{quality['perplexity']:.3f} ({quality['perplexity_increase'] * 100:+.2f}% vs FP32), agreement "
                        f"{quality['agreement_with_fp32']:.3f} ({quality['decode_agreement_with_fp32']:.3f} on decode steps). Load average {load[0]:.1f}: timings on a busy machine are not evidence of speed; "
                        "aiopt bench for figures."), soft_wrap=True)
