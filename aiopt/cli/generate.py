"""`aiopt generate`: text from a causal language model, streamed as it comes."""
from __future__ import annotations

import sys
from typing import Any

import typer
from rich.markup import escape

from aiopt.cli.app import command
from aiopt.cli.options import JSON_OPTION, config_from, config_options
from aiopt.cli.render import emit_json, stderr
from aiopt.llm.generate import GenerateConfig, GenerateRuntime, generate_text


@command(epilog='Example: aiopt generate gpt/ --prompt "My fellow Americans" --max-new-tokens 64 --greedy')
@config_options(GenerateConfig, GenerateRuntime)
def generate(
    artifact: str = typer.Argument(..., help="A causal-LM Hugging Face folder (runs on PyTorch) or an ONNX export with a KV cache (aiopt export; runs on ONNX Runtime)."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="Text to continue."),
    as_json: bool = JSON_OPTION,
    **options: Any,
) -> None:
    """Generate text from a causal language model, streamed as it comes."""
    sampled = options["temperature"] is not None or not options["greedy"]
    config = config_from(GenerateConfig, options, greedy=not sampled)
    config.check()
    where = config_from(GenerateRuntime, options)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    result = generate_text(artifact, prompt, config, write=None if as_json else write, threads=where.threads, runtime=where.runtime)
    if as_json:
        emit_json(result)
        return
    sys.stdout.write("\n")
    speed = f", decode {result['decode_tokens_per_s']:.1f} tok/s" if result["decode_tokens_per_s"] else ""
    stderr.print(escape(f"{result['new_tokens']} tokens on {result['runtime']} ({result['mode']}), first after {result['ttft_ms']:.0f} ms{speed}"
                        + (", stopped at end-of-text" if result["stopped_at_eos"] else "")))
