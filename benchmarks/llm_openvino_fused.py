"""aiopt's OpenVINO IRs (run by aiopt's runner) beside OpenVINO GenAI's LLMPipeline on an
Optimum-Intel IR of the same precision, interleaved in one process: TTFT at --prompt-len and
decode tokens/s at batch 1, medians over --rounds rounds, a fresh random prompt each round, and
each runner's ratio to the first row's (OpenVINO GenAI's) in the same round, median over the rounds.

    python benchmarks/llm_openvino_fused.py --folder benchmarks/.work/qwen2.5-0.5b-config-seed0 \\
        --optimum-ir benchmarks/.work/peers-qwen/ov-int8 \\
        --aiopt-ir fused=Q/ov-int8-asym-fused/openvino_model.xml --aiopt-ir onnx=Q/ov-int8-asym/openvino_model.xml

--aiopt-ir NAME=XML names an IR aiopt quantize built (build_openvino: its rt_info carries the runtime
options and the stateful mark, which open_ir honours, exactly as quantize measured it); --folder is
the Hugging Face folder the IRs come from (the KV-cache geometry). The OpenVINO GenAI row is
llm_peers.py's (`_openvino_genai`: prefix caching off, the same threads).
"""
from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import numpy as np
from llm_peers import _openvino_genai, _runner_once

from aiopt.machine import settle
from aiopt.llm.causal_lm import Shape, read_config
from aiopt.llm.recipes_openvino import open_ir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", required=True, type=Path)
    parser.add_argument("--optimum-ir", type=Path, help="an Optimum-Intel export folder (optimum-cli export openvino)")
    parser.add_argument("--precision", default="int8", help="the Optimum export's --weight-format (only used to export it when missing)")
    parser.add_argument("--aiopt-ir", action="append", default=[], help="NAME=openvino_model.xml (repeatable)")
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    shape = Shape.from_config(read_config(args.folder))
    runs = {}
    if args.optimum_ir:
        runs["OpenVINO GenAI (LLMPipeline, Optimum IR)"] = _openvino_genai(args.folder, args.optimum_ir, args.precision, args.threads,
                                                                          args.new_tokens, None)[1]
    for item in args.aiopt_ir:
        name, _, xml = item.partition("=")
        runs[f"aiopt {name}"] = _runner_once(open_ir(Path(xml), shape, args.threads, "f32"), args.new_tokens)
    rng = np.random.default_rng(0)
    ttft, rate = {name: [] for name in runs}, {name: [] for name in runs}
    loads = [os.getloadavg()]
    for round_index in range(args.rounds):
        names = list(runs)
        for name in names[round_index % len(names):] + names[:round_index % len(names)]:  # each goes first in turn
            settle()
            seconds, tokens_per_s = runs[name](rng.integers(0, shape.vocab_size, args.prompt_len))
            ttft[name].append(1000 * seconds)
            rate[name].append(tokens_per_s)
        loads.append(os.getloadavg())
    print(f"prompt {args.prompt_len}, {args.new_tokens} new tokens, batch 1, {args.threads} threads, median of {args.rounds} interleaved rounds")
    first = next(iter(runs))  # ratios to the first row within each round: the load drifts between rounds, less within one
    print(f"| runner | TTFT | decode tok/s | TTFT / {first}'s, same round | decode / {first}'s, same round | TTFTs | tok/s |")
    print("|---|---:|---:|---:|---:|---|---|")
    for name in runs:
        ttft_ratio = statistics.median(a / b for a, b in zip(ttft[name], ttft[first]))
        rate_ratio = statistics.median(a / b for a, b in zip(rate[name], rate[first]))
        print(f"| {name} | {statistics.median(ttft[name]):,.0f} ms | {statistics.median(rate[name]):.1f} | {ttft_ratio:.2f}x | {rate_ratio:.2f}x | "
              f"{', '.join(f'{t:,.0f}' for t in ttft[name])} | {', '.join(f'{r:.1f}' for r in rate[name])} |")
    print("load average (1, 5, 15 min) before and after each round:", ", ".join("/".join(f"{x:.1f}" for x in load) for load in loads))


if __name__ == "__main__":
    main()
