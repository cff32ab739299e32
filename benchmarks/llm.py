"""The LLM benchmark: Qwen2.5-0.5B's published configuration with random weights, through
export (ONNX with a KV cache), generate (torch and ONNX Runtime give the same greedy tokens)
and bench (TTFT, decode tokens/s, the memory-bandwidth limit and the fraction reached).

    python benchmarks/llm.py                 # 0.5B configuration, 2 threads (~10 min on a quiet 2-core machine)
    python benchmarks/llm.py --quick         # gpt:tiny, seconds: the smoke run
    python benchmarks/llm.py --write         # also write benchmarks/results/llm-<machine>.{json,md}

No download: the configuration is Qwen2ForCausalLM's as published (hidden 896, 24 layers, 14
heads, 2 KV heads, intermediate 4864, vocabulary 151936, tied embeddings; 494M parameters), the
weights are drawn from a fixed seed. Speed does not depend on the values of the weights, so
the figures show the memory-bound regime real users live in; quality is measured on the
trained `gpt` (aiopt train gpt). The folder borrows gpt's byte-level tokenizer (its ids fit the
vocabulary) so that `aiopt generate` can turn text into ids. Time only on a quiet machine: a
second process on two cores cuts every figure, and the report gives the load average.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent

QWEN25_05B = dict(  # noqa: C408 -- config.json's keys as keywords; https://huggingface.co/Qwen/Qwen2.5-0.5B/blob/main/config.json
    architectures=["Qwen2ForCausalLM"], hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
    num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
    tie_word_embeddings=True, hidden_act="silu", use_sliding_window=False, bos_token_id=151643, eos_token_id=151643,
)


def build_qwen_folder(folder: Path, tokenizer_from: Path, seed: int = 0) -> Path:
    """Qwen2.5-0.5B's configuration, random weights from `seed`, saved as a Hugging Face folder (cached)."""
    if (folder / "model.safetensors").is_file():
        return folder
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.Qwen2Config(**{k: v for k, v in QWEN25_05B.items() if k != "architectures"})
    model = transformers.Qwen2ForCausalLM(config).eval()
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_from / name, tmp / name)
    tmp.rename(folder)
    return folder


def _cli(*args: str) -> str:
    import subprocess

    print("$ aiopt " + " ".join(args), file=sys.stderr, flush=True)
    result = subprocess.run([sys.executable, "-m", "aiopt", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"aiopt {' '.join(args)} failed ({result.returncode}): {result.stderr.strip().splitlines()[-1:]}")
    return result.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="gpt:tiny instead of the 0.5B configuration")
    parser.add_argument("--work", default=str(ROOT / ".work"), help="model cache, reused between runs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, action="append", help="decode batch sizes (default 1 and 8)")
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/llm-<machine>.{json,md}")
    args = parser.parse_args(argv)

    from aiopt.machine import describe_machine
    from aiopt.bench.report import to_json
    from aiopt.bench.generative import GenerativeBenchConfig, markdown, run_generative_bench

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    gpt = work / "gpt-tiny"
    if not (gpt / "model.safetensors").is_file():
        _cli("train", "gpt:tiny", "-o", str(gpt))
    folder = gpt if args.quick else build_qwen_folder(work / "qwen2.5-0.5b-config-seed0", gpt)
    exports = []
    for exporter in ("torch", "genai"):  # both routes to ONNX Runtime: torch.onnx's dynamo exporter, ONNX Runtime GenAI's builder
        target = folder.with_name(f"{folder.name}.{exporter}.onnx")
        if not (target / "model.onnx").is_file():
            started = time.perf_counter()
            _cli("export", str(folder), "--format", "onnx", "--exporter", exporter, "-o", str(target))
            print(f"export ({exporter}) took {time.perf_counter() - started:.0f} s", file=sys.stderr)
        exports.append(target)
    prompt = "My fellow Americans, the state of our Union is"
    tokens = {}
    for artifact in (folder, *exports):
        result = json.loads(_cli("generate", str(artifact), "--prompt", prompt, "-n", "16", "--threads", str(args.threads), "--json"))
        tokens[artifact.name] = result["tokens"]
    same = len({tuple(t) for t in tokens.values()}) == 1
    print(f"greedy tokens over 16 steps, torch vs both ONNX exports: {'identical' if same else 'DIFFERENT: ' + json.dumps(tokens)}", file=sys.stderr)

    config = GenerativeBenchConfig(batch_sizes=tuple(args.batch_size or (1, 8)), threads=args.threads, new_tokens=args.new_tokens,
                                   ttft_prompts=(128, 512) if not args.quick else (32, 64), decode_prompt=128 if not args.quick else 32,
                                   perplexity_tokens=4096 if args.quick else 0)  # random weights: no perplexity worth reporting
    document = run_generative_bench([str(folder), *map(str, exports)], config, command=" ".join(["python", "benchmarks/llm.py", *sys.argv[1:]]),
                                    say=lambda message: print(message, file=sys.stderr, flush=True),
                                    runtimes=("onnxruntime", "onnxruntime-genai"))
    document["generate_same_tokens"] = same
    document["model"] = "gpt:tiny" if args.quick else "Qwen2.5-0.5B configuration, random weights (seed 0)"
    text = f"Model: {document['model']}; greedy tokens torch vs ONNX Runtime identical: {same}\n\n" + markdown(document)
    print(text)
    if args.write:
        machine = describe_machine()["id"]
        stem = ROOT / "results" / f"llm-{machine}{'-quick' if args.quick else ''}"
        stem.with_suffix(".json").write_text(to_json(document))
        stem.with_suffix(".md").write_text(text)
        print(f"wrote {stem}.json and .md", file=sys.stderr)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
