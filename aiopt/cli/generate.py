"""`aiopt generate`: text from a causal language model, streamed as it comes."""
from __future__ import annotations

import sys

import typer
from rich.markup import escape

from aiopt.cli.app import command
from aiopt.cli.options import JSON_OPTION
from aiopt.cli.render import emit_json, stderr
from aiopt.llm.generate import GenerateConfig, generate_text


@command(epilog='Example: aiopt generate gpt/ --prompt "My fellow Americans" --max-new-tokens 64 --greedy')
def generate(
    artifact: str = typer.Argument(..., help="A causal-LM Hugging Face folder (runs on PyTorch) or an ONNX export with a KV cache (aiopt export; runs on ONNX Runtime)."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="Text to continue."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", "-n", help="Tokens to generate, at least 1 (fewer if the model ends the text)."),
    greedy: bool = typer.Option(True, "--greedy/--sample", help="Most likely token each step (default), or sample with --temperature and --seed."),
    temperature: float | None = typer.Option(None, "--temperature", help="Sampling temperature (> 0); implies --sample."),
    seed: int = typer.Option(0, "--seed", help="Seed for sampling: the same seed gives the same text."),
    threads: int | None = typer.Option(None, "--threads", help="Threads for the runtime (default: all cores)."),
    runtime: str | None = typer.Option(None, "--runtime", help="For an ONNX export: onnxruntime (default), openvino, openvino-stateful (the KV cache kept in OpenVINO's state), or onnxruntime-genai (an --exporter genai export)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Generate text from a causal language model, streamed as it comes."""
    sampled = temperature is not None or not greedy
    config = GenerateConfig(max_new_tokens=max_new_tokens, greedy=not sampled, temperature=1.0 if temperature is None else temperature, seed=seed)
    config.check()

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    result = generate_text(artifact, prompt, config, write=None if as_json else write, threads=threads, runtime=runtime)
    if as_json:
        emit_json(result)
        return
    sys.stdout.write("\n")
    speed = f", decode {result['decode_tokens_per_s']:.1f} tok/s" if result["decode_tokens_per_s"] else ""
    stderr.print(escape(f"{result['new_tokens']} tokens on {result['runtime']} ({result['mode']}), first after {result['ttft_ms']:.0f} ms{speed}"
                        + (", stopped at end-of-text" if result["stopped_at_eos"] else "")))
