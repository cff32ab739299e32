"""Same-run A/B of the ONNX Runtime causal-LM runner's speed paths, interleaved round by round on
one session of one export, so that load and drift hit both sides alike:

  before: every prompt position's logits computed by the prefill (then all but the last dropped),
          and every step's present KV cache copied out of ONNX Runtime into numpy (session.run);
  after:  the prefill feeds `logits_start` = -1 (only the last position reaches the output layer),
          and the cache stays in ONNX Runtime's OrtValues between steps (run_with_ort_values).

With --compare openvino-stateful, the same A/B on OpenVINO instead: before, the export compiled as
it is (the KV cache fed in and read out every step); after, the export made stateful
(aiopt.llm.openvino_stateful: the cache in OpenVINO's variables).

With --compare shared-cache, on a GroupQueryAttention graph (ONNX Runtime GenAI's model builder,
e.g. the folder aiopt quantize writes for a `genai-*` winner): before, each step's present cache a
new buffer (past copied in); after, past and present bound to one buffer written in place, as
GenAI's generator does (aiopt.llm.runners._SharedCache).

    python benchmarks/llm_speed_paths.py                         # a wide-vocabulary model (see WIDE), random weights
    python benchmarks/llm_speed_paths.py --model benchmarks/.work/base/gpt --prompt-len 192
    python benchmarks/llm_speed_paths.py --model EXPORT_FOLDER --rounds 7 --json out.json
    python benchmarks/llm_speed_paths.py --model EXPORT_FOLDER --compare openvino-stateful --prompt-len 64 --rounds 11
    python benchmarks/llm_speed_paths.py --model benchmarks/.work/peers-qwen/aiopt --compare shared-cache --new-tokens 128 --rounds 9

Reports TTFT and decode tokens/s medians of each side, the after/before ratios, and the load
average at the start and the end; greedy tokens must be identical on both sides (exit 1 if not).
A ratio measured on a busy machine is still a same-run ratio, but say the load with it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent

# Qwen2.5's vocabulary and tied output layer on a small body: the case where the output layer
# dominates a prefill (a 512-token prompt: ~80 GFLOP in the output layer, ~12 in the layers).
WIDE = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,  # noqa: C408
            vocab_size=151936, max_position_embeddings=4096, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
            hidden_act="silu", use_sliding_window=False, bos_token_id=0, eos_token_id=0)


def wide_folder(work: Path, seed: int = 0) -> Path:
    folder = work / "wide-vocab-seed0"
    if (folder / "model.safetensors").is_file():
        return folder
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**WIDE)).eval()
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tmp.rename(folder)
    return folder


def export_of(model: Path, work: Path) -> Path:
    """An aiopt KV export of `model` (a Hugging Face folder is exported once, cached in `work`)."""
    from aiopt.llm.export_kv import ONNX_FILE, export_causal_lm_onnx

    if (model / ONNX_FILE).is_file():
        return model
    target = work / f"{model.name}.speed.onnx"
    if not (target / ONNX_FILE).is_file():
        started = time.perf_counter()
        export_causal_lm_onnx(model, target, say=lambda m: print(m, file=sys.stderr, flush=True))
        print(f"exported {model} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a causal-LM folder or an aiopt KV export (default: WIDE with random weights)")
    parser.add_argument("--work", default=str(ROOT / ".work"))
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the result here too")
    parser.add_argument("--compare", choices=("ort-paths", "openvino-stateful", "shared-cache"), default="ort-paths",
                        help="ort-paths: ONNX Runtime's plain vs fast paths; openvino-stateful: OpenVINO stateless vs stateful; "
                             "shared-cache: a GroupQueryAttention graph's cache copied each step vs written in place")
    args = parser.parse_args(argv)

    import numpy as np

    from aiopt.llm.causal_lm import Shape
    from aiopt.llm.generate import GenerateConfig, generate_ids
    from aiopt.llm.openvino_stateful import OpenVINOStatefulCausalLM
    from aiopt.llm.runners import OpenVINOCausalLM, OrtCausalLM

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    export = export_of(Path(args.model) if args.model else wide_folder(work), work)
    metadata = json.loads((export / "aiopt.json").read_text())
    shape = Shape(**{k: metadata["kv_cache"][k] for k in Shape.__dataclass_fields__})
    prompt_len = min(args.prompt_len, (shape.context_length or 1 << 30) - args.new_tokens - 1)
    load_start = os.getloadavg()
    if args.compare in ("openvino-stateful", "shared-cache"):  # two runners, one per side
        if args.compare == "openvino-stateful":
            runners = {"before": OpenVINOCausalLM(export / "model.onnx", shape, threads=args.threads),
                       "after": OpenVINOStatefulCausalLM(export / "model.onnx", shape, threads=args.threads)}
        else:
            runners = {"before": OrtCausalLM(export / "model.onnx", shape, threads=args.threads, share_cache=False),
                       "after": OrtCausalLM(export / "model.onnx", shape, threads=args.threads)}
            if not runners["after"].shares_cache:
                raise SystemExit(f"{export}/model.onnx has no GroupQueryAttention: nothing to share; pass a GenAI builder's folder")

        def side_runner(side: str):
            return runners[side]
    else:
        lm = OrtCausalLM(export / "model.onnx", shape, threads=args.threads)
        if not lm.takes_logits_start:
            raise SystemExit(f"{export} has no logits_start input: export it again with this aiopt")
        paths = {"before": (False, False), "after": (True, True)}  # (logits_start fed, cache kept in ORT)

        def side_runner(side: str):
            lm.takes_logits_start, lm.keep_cache_in_ort = paths[side]
            return lm
    prompt = np.random.default_rng(0).integers(0, shape.vocab_size, (args.batch_size, prompt_len))
    sides = ("before", "after")
    ttft, decode, tokens = {s: [] for s in sides}, {s: [] for s in sides}, {}
    for side in sides:
        generate_ids(side_runner(side), prompt[:, :8], GenerateConfig(max_new_tokens=2, stop_at_eos=False))  # warm-up
    for round_ in range(args.rounds):
        for side in (sides if round_ % 2 == 0 else sides[::-1]):
            lm = side_runner(side)
            first = generate_ids(lm, prompt, GenerateConfig(max_new_tokens=1, stop_at_eos=False))
            run = generate_ids(lm, prompt, GenerateConfig(max_new_tokens=args.new_tokens, stop_at_eos=False))
            ttft[side].append(first.ttft_s * 1000)
            decode[side].append(run.decode_tokens_per_s() * args.batch_size)
            tokens.setdefault(side, run.tokens)
    same = tokens["before"] == tokens["after"]
    result = {"compare": args.compare, "export": str(export), "prompt_len": prompt_len, "new_tokens": args.new_tokens, "batch_size": args.batch_size,
              "rounds": args.rounds, "threads": args.threads, "vocab_size": shape.vocab_size, "layers": shape.layers,
              "ttft_ms": {s: statistics.median(v) for s, v in ttft.items()},
              "decode_tokens_per_s": {s: statistics.median(v) for s, v in decode.items()},
              "ttft_speedup": statistics.median(ttft["before"]) / statistics.median(ttft["after"]),
              "decode_speedup": statistics.median(decode["after"]) / statistics.median(decode["before"]),
              # per round, the two sides ran back to back: their ratio cancels load that changed between rounds,
              # which a ratio of the two sides' medians does not when the load moves mid-run
              "decode_speedup_per_round": statistics.median(a / b for a, b in zip(decode["after"], decode["before"])),
              "rounds_after_faster": sum(a > b for a, b in zip(decode["after"], decode["before"])),
              "per_round": {"ttft_ms": ttft, "decode_tokens_per_s": decode},
              "same_greedy_tokens": same, "load_average_start": list(load_start), "load_average_end": list(os.getloadavg())}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
