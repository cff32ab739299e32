"""CLI commands for generative models: `aiopt generate` (registered by aiopt.cli)."""
from __future__ import annotations

import sys

import typer
from rich.markup import escape

from aiopt.cli import JSON_OPTION, _command, _emit_json, stderr
from aiopt.fileio import human_size


@_command(epilog='Example: aiopt generate gpt/ --prompt "My fellow Americans" --max-new-tokens 64 --greedy')
def generate(
    artifact: str = typer.Argument(..., help="A causal-LM Hugging Face folder (runs on PyTorch) or an ONNX export with a KV cache (aiopt export; runs on ONNX Runtime)."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="Text to continue."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", "-n", help="Tokens to generate, at least 1 (fewer if the model ends the text)."),
    greedy: bool = typer.Option(True, "--greedy/--sample", help="Most likely token each step (default), or sample with --temperature and --seed."),
    temperature: float | None = typer.Option(None, "--temperature", help="Sampling temperature (> 0); implies --sample."),
    seed: int = typer.Option(0, "--seed", help="Seed for sampling: the same seed gives the same text."),
    threads: int | None = typer.Option(None, "--threads", help="Threads for the runtime (default: all cores)."),
    runtime: str | None = typer.Option(None, "--runtime", help="For an ONNX export: onnxruntime (default), openvino, or onnxruntime-genai (an --exporter genai export)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Generate text from a causal language model, streamed as it comes."""
    from aiopt.llm.generate import GenerateConfig, generate_text

    sampled = temperature is not None or not greedy
    config = GenerateConfig(max_new_tokens=max_new_tokens, greedy=not sampled, temperature=1.0 if temperature is None else temperature, seed=seed)
    config.check()

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    result = generate_text(artifact, prompt, config, write=None if as_json else write, threads=threads, runtime=runtime)
    if as_json:
        _emit_json(result)
        return
    sys.stdout.write("\n")
    speed = f", decode {result['decode_tokens_per_s']:.1f} tok/s" if result["decode_tokens_per_s"] else ""
    stderr.print(escape(f"{result['new_tokens']} tokens on {result['runtime']} ({result['mode']}), first after {result['ttft_ms']:.0f} ms{speed}"
                        + (", stopped at end-of-text" if result["stopped_at_eos"] else "")))


def export_causal_lm(folder: str, output: str, exporter: str, opset: int, force: bool, as_json: bool) -> None:
    """`aiopt export FOLDER --format onnx` for a causal LM: ONNX with past key/values, validated."""
    import contextlib
    import warnings

    from aiopt.cli import _say, stdout
    from aiopt.llm.export_kv import KVExportConfig, export_causal_lm_onnx

    # torch.onnx prints its progress on stdout, which carries only results here.
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = export_causal_lm_onnx(folder, output, KVExportConfig(exporter=exporter, opset=opset), force=force, say=_say)
    if as_json:
        _emit_json(result)
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


def bench_generative(artifacts: list[str], batch_sizes: list[int] | None, threads: int | None, json_file: str | None,
                     markdown_file: str | None, force: bool, backends: list[str] | None = None, html_file: str | None = None,
                     prompt_lens: list[int] | None = None, new_tokens: int = 64, perplexity_tokens: int = 4096) -> None:
    """`aiopt bench` when every artifact is a generative model (aiopt.llm.bench)."""
    from aiopt.artifacts import command_line
    from aiopt.bench.report import to_json
    from aiopt.cli import _say, stdout
    from aiopt.fileio import check_output_path, write_bytes_atomic
    from aiopt.llm.bench import GenerativeBenchConfig, html_page, markdown, run_generative_bench

    outputs = {name: check_output_path(path, *artifacts, force=force)
               for name, path in (("json", json_file), ("markdown", markdown_file), ("html", html_file)) if path}
    config = GenerativeBenchConfig(batch_sizes=tuple(batch_sizes or (1, 8)), threads=threads, new_tokens=new_tokens,
                                   perplexity_tokens=perplexity_tokens, **({"ttft_prompts": tuple(prompt_lens)} if prompt_lens else {}))
    config.check()
    document = run_generative_bench(artifacts, config, command=command_line(), say=_say, runtimes=tuple(backends or ()))
    text = markdown(document)
    if "json" in outputs:
        write_bytes_atomic(outputs["json"], to_json(document).encode())
    if "markdown" in outputs:
        write_bytes_atomic(outputs["markdown"], text.encode())
    if "html" in outputs:
        write_bytes_atomic(outputs["html"], html_page(document).encode())
    stdout.print(escape(text), soft_wrap=True)
