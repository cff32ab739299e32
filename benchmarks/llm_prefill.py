"""Time to first token of a 512-token prompt on OpenVINO, prefill only, interleaved in one process:
OpenVINO GenAI's LLMPipeline on an Optimum-Intel INT8 export (its paged-attention backend and its
SDPA one, one new token, prefix caching off) beside aiopt's IRs in aiopt's own runner (the route's
`ov-int8-asym-dq32` prefill, a fused IR from openvino_convert) and the Optimum IR compiled by plain
OpenVINO. Each round gives every row a fresh random prompt, in turn; the table gives medians and
each row's ratio to the first row's time in the same round (the load drifts between rounds).

    PYTHONPATH=. python benchmarks/llm_prefill.py --rounds 5
    PYTHONPATH=. python benchmarks/llm_prefill.py --rounds 1 --properties --profile route-ir
    PYTHONPATH=. python benchmarks/llm_prefill.py --rounds 1 --rows route-ir-bf16-dq0 route-ir-bf16-dq32 route-ir-bf16-dq128 --profile

Rows: `genai-pa` (LLMPipeline's default backend on CPU, PagedAttention, its SchedulerConfig defaults:
dynamic split-fuse, 256 tokens per step), `genai-pa-whole` (the same, max_num_batched_tokens at
the prompt's length: one step), `genai-sdpa` (ATTENTION_BACKEND="SDPA": the stateful IR as
Optimum exported it), `route` (aiopt's route folder, --route: the IR prefill plus the KV cache
handed to llama.cpp, what aiopt's TTFT is), `route-ir` (that IR's prefill alone, the options it
carries), `route-ir-PREC[-dqN]` (the same IR compiled with INFERENCE_PRECISION_HINT PREC, f32 or
bf16, and DYNAMIC_QUANTIZATION_GROUP_SIZE N: `route-ir-bf16-dq128` is the candidate
ov-int8-asym-bf16-dq128, which has the same weights), `route-PREC[-dqN]` (that prefill with the
cache handed to the route's GGUF), `route-ir-chunk256` (the route's IR fed the prompt in 256-token
calls through its cache), `fused-ir` (--fused-ir, the options it carries), `optimum-ir` (the Optimum
IR stateful in plain OpenVINO, logits of all positions, the plugin's defaults). --rows picks some.

--quality ROW... scores route-ir variants as the route's prefill instead of timing: perplexity and
agreement against the FP32 export through the handed-over cache, as aiopt quantize scores a candidate.
--properties prints each compiled model's CPU plugin properties (LLMPipeline's own compiled model
cannot be read back from the pipeline; `optimum-ir` is its IR under the plugin's defaults). --profile ROW... prints the per-op time of one prefill of each row named (of every
aiopt IR row when none is named; PERF_COUNT), summed by layer type and kernel.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from aiopt.llm.causal_lm import Shape, read_config  # noqa: E402 -- after the path of the checkout this script belongs to
from aiopt.llm.recipes_openvino import DYNAMIC_QUANTIZATION, open_ir  # noqa: E402
from aiopt.llm.route import RoutedCausalLM, open_route  # noqa: E402
from aiopt.llm.runners import OpenVINOCausalLM  # noqa: E402
from aiopt.machine import settle  # noqa: E402
from llm_peers import OptimumIRRunner  # noqa: E402

WORK = ROOT / ".work"  # where llm_peers.py --model qwen0.5b --work benchmarks/.work/peers-qwen left its artifacts
PROPERTIES = ("INFERENCE_PRECISION_HINT", "KV_CACHE_PRECISION", "KEY_CACHE_PRECISION", "VALUE_CACHE_PRECISION", "KEY_CACHE_GROUP_SIZE",
              "VALUE_CACHE_GROUP_SIZE", "DYNAMIC_QUANTIZATION_GROUP_SIZE", "NUM_STREAMS", "INFERENCE_NUM_THREADS", "PERFORMANCE_HINT",
              "ENABLE_CPU_PINNING", "ENABLE_HYPER_THREADING", "SCHEDULING_CORE_TYPE", "EXECUTION_MODE_HINT", "CPU_DENORMALS_OPTIMIZATION",
              "MODEL_DISTRIBUTION_POLICY", "ENABLE_MMAP")


OPTION_ROW = re.compile(r"(route|route-ir)-(f32|bf16)(?:-dq(\d+))?")


def genai_row(folder: Path, threads: int, backend: str, chunk: int | None):
    """prompt -> seconds to the first token of LLMPipeline (its own perf metrics)."""
    import openvino as ov
    import openvino_genai

    extra = {}
    if backend == "PA":  # the SDPA backend refuses a scheduler config (it has no scheduler; nothing is cached between generate calls)
        scheduler = openvino_genai.SchedulerConfig()
        scheduler.enable_prefix_caching = False  # else a repeated prefix comes from its cache
        if chunk:
            scheduler.max_num_batched_tokens = chunk
        extra["scheduler_config"] = scheduler
    pipe = openvino_genai.LLMPipeline(str(folder), "CPU", INFERENCE_NUM_THREADS=threads, ATTENTION_BACKEND=backend, **extra)
    config = openvino_genai.GenerationConfig()
    config.max_new_tokens = config.min_new_tokens = 1
    config.ignore_eos, config.do_sample = True, False

    def once(prompt: np.ndarray) -> float:
        ids = prompt.astype(np.int64)[None]
        metrics = pipe.generate(openvino_genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids))), config).perf_metrics
        return metrics.get_ttft().mean / 1000

    return once, None


def runner_row(lm, chunk: int | None = None):
    """prompt -> seconds of aiopt's runner's generation prefill (last position's logits), optionally in chunks."""
    def once(prompt: np.ndarray) -> float:
        ids = prompt[None]
        start = time.perf_counter()
        if chunk and isinstance(lm, OpenVINOCausalLM):  # through the cache the previous chunk left
            _, state = lm.prefill(ids[:, :chunk], last_only=True)
            for at in range(chunk, ids.shape[1], chunk):
                present, past = state
                _, state = lm._run(ids[:, at:at + chunk], present, past, True)
        else:
            lm.prefill(ids, last_only=True)
        return time.perf_counter() - start

    return once


def compiled_of(lm):
    """The openvino.CompiledModel behind an aiopt or Optimum runner."""
    if hasattr(lm, "compiled"):
        return lm.compiled
    if hasattr(lm, "request"):
        return lm.request.get_compiled_model()
    if hasattr(lm, "prefill_lm"):
        return compiled_of(lm.prefill_lm)
    return None


def properties(compiled) -> dict:
    found = {}
    for name in PROPERTIES:
        try:
            found[name] = str(compiled.get_property(name))
        except Exception:  # noqa: BLE001 -- a property this plugin version does not have
            pass
    return found


def variant_ir(args, shape: Shape, variant: re.Match) -> OpenVINOCausalLM:
    """The route folder's IR with the options it carries, the precision hint and group of `variant` over them."""
    route_ir = args.route / "openvino_model.xml"
    carried = open_ir(route_ir, shape, args.threads, "f32").options
    return OpenVINOCausalLM(route_ir, shape, args.threads, options={**carried, "INFERENCE_PRECISION_HINT": variant[2],
                                                                   **({DYNAMIC_QUANTIZATION: variant[3]} if variant[3] else {})})


def build(args, shape: Shape) -> dict:
    """name -> (once, runner or None) for the rows asked for."""
    rows, wanted = {}, set(args.rows)
    optimum = args.optimum_ir
    if "genai-pa" in wanted:
        rows["genai-pa"] = genai_row(optimum, args.threads, "PA", None)
    if "genai-pa-whole" in wanted:
        rows["genai-pa-whole"] = genai_row(optimum, args.threads, "PA", args.prompt_len)
    if "genai-sdpa" in wanted:
        rows["genai-sdpa"] = genai_row(optimum, args.threads, "SDPA", None)
    if "route" in wanted:
        lm = open_route(args.route, args.threads)[0]
        rows["route"] = runner_row(lm), lm
    route_ir = args.route / "openvino_model.xml"
    if "route-ir" in wanted:
        lm = open_ir(route_ir, shape, args.threads, "f32")
        rows["route-ir"] = runner_row(lm), lm
    for name in sorted(wanted):
        variant = OPTION_ROW.fullmatch(name)
        if variant:  # the route's IR compiled with another precision hint / dynamic quantization group
            lm = variant_ir(args, shape, variant)
            if variant[1] == "route":  # and its cache handed to the route folder's GGUF, as the route's TTFT is timed
                lm = RoutedCausalLM(lm, open_route(args.route, args.threads)[0].decode_lm)
            rows[name] = runner_row(lm), lm
    if "route-ir-chunk256" in wanted:
        lm = open_ir(route_ir, shape, args.threads, "f32")
        rows["route-ir-chunk256"] = runner_row(lm, 256), lm
    if "fused-ir" in wanted and args.fused_ir:
        lm = open_ir(args.fused_ir, shape, args.threads, "f32")
        rows["fused-ir"] = runner_row(lm), lm
    if "optimum-ir" in wanted:
        lm = OptimumIRRunner(optimum / "openvino_model.xml", args.threads)
        rows["optimum-ir"] = runner_row(lm), lm
    return rows


def profile(name: str, lm, path: Path, prompt: np.ndarray, top: int) -> None:
    """Per-op time of one prefill, summed by (layer type, kernel): the row's runner rebuilt on `path`
    with its own options plus PERF_COUNT."""
    profiled = type(lm)(path, lm.shape, int(lm.options["INFERENCE_NUM_THREADS"]), options={**lm.options, "PERF_COUNT": True})
    profiled.prefill(prompt[None], last_only=True)  # warm-up at this length: the plugin prepares its kernels per input shape
    start = time.perf_counter()
    _, state = profiled.prefill(prompt[None], last_only=True)
    wall = time.perf_counter() - start
    request = getattr(profiled, "request", None) or state[0]
    totals, counts = collections.Counter(), collections.Counter()
    for info in request.profiling_info:
        key = (info.node_type, info.exec_type)
        totals[key] += info.real_time.total_seconds()
        counts[key] += 1
    total = sum(totals.values())
    weights = sum(seconds for (kind, _), seconds in totals.items() if kind.startswith("FullyConnected"))
    print(f"\nprofile of {name}: one prefill of {len(prompt)} tokens, {wall * 1000:,.0f} ms wall, {total * 1000:,.0f} ms summed over ops, "
          f"{weights * 1000:,.0f} ms of them in the weight layers (FullyConnected*), load {os.getloadavg()[0]:.1f}; top {top}:")
    print("| layer type | kernel | ops | ms | share |\n|---|---|---:|---:|---:|")
    for (kind, kernel), seconds in totals.most_common(top):
        print(f"| {kind} | {kernel} | {counts[(kind, kernel)]} | {seconds * 1000:,.1f} | {seconds / total:.0%} |")


def quality(args, shape: Shape, variants: list[str]) -> None:
    """Each route-ir-PREC-dqN variant as the route's prefill (its cache handed to the route folder's
    GGUF): perplexity and greedy agreement against the FP32 ONNX export on ONNX Runtime, scored as
    aiopt quantize scores a candidate (held-out windows, half prefilled, half decoded through the cache)."""
    from aiopt.llm.lm_quality import heldout_windows, score
    from aiopt.llm.recipes_llamacpp import LlamaCppCausalLM
    from aiopt.llm.runners import OrtCausalLM

    windows = heldout_windows(args.folder, 128, args.eval_tokens)
    reference = score(OrtCausalLM(args.reference_onnx, shape, args.threads), windows)
    route_ir = args.route / "openvino_model.xml"
    print(f"\nquality through the handed-over cache ({windows.size} tokens in windows of 128; FP32 reference {args.reference_onnx.name})")
    print("| prefill | perplexity vs FP32 | agreement | agreement on decode steps |\n|---|---:|---:|---:|")
    for name in variants:
        variant = OPTION_ROW.fullmatch(name)
        prefill = variant_ir(args, shape, variant) if variant else open_ir(route_ir, shape, args.threads, "f32")
        routed = RoutedCausalLM(prefill, LlamaCppCausalLM(args.route / "model.gguf", shape, args.threads))
        result = score(routed, windows)
        print(f"| {name} | {result.perplexity / reference.perplexity - 1:+.2%} | {result.agreement(reference):.3f} | "
              f"{result.agreement(reference, decoded_only=True):.3f} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=WORK / "qwen2.5-0.5b-config-seed0", help="the Hugging Face folder (the geometry)")
    parser.add_argument("--optimum-ir", type=Path, default=WORK / "peers-qwen" / "ov-int8", help="Optimum-Intel INT8 export folder")
    parser.add_argument("--route", type=Path, default=WORK / "peers-qwen" / "aiopt", help="aiopt's route folder (aiopt quantize's output)")
    parser.add_argument("--fused-ir", type=Path, help="a fused IR aiopt quantize built (openvino_model.xml of an ov-*-fused* candidate)")
    parser.add_argument("--rows", nargs="+", default=["genai-pa", "genai-pa-whole", "genai-sdpa", "route", "route-bf16-dq128", "route-ir",
                                                     "route-ir-bf16", "route-ir-f32-dq128", "route-ir-bf16-dq128", "fused-ir", "optimum-ir"])
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--properties", action="store_true")
    parser.add_argument("--profile", nargs="*", help="row names (none: every aiopt IR row): per-op profile of one prefill each")
    parser.add_argument("--quality", nargs="*", help="score these route-ir variants as the route's prefill (no timing rows then), e.g. "
                        "route-ir route-ir-bf16-dq128")
    parser.add_argument("--reference-onnx", type=Path, default=WORK / "qwen2.5-0.5b-config-seed0.torch.onnx" / "model.onnx",
                        help="the FP32 KV-cache export --quality compares against")
    parser.add_argument("--eval-tokens", type=int, default=256)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    shape = Shape.from_config(read_config(args.folder))
    if args.quality:
        quality(args, shape, args.quality)
        return 0
    rows = build(args, shape)
    rng = np.random.default_rng(0)
    for once, _ in rows.values():
        once(rng.integers(0, shape.vocab_size, 16))  # warm-up (first-inference allocations)
    if args.properties:
        for name, (_, lm) in rows.items():
            compiled = compiled_of(lm) if lm is not None else None
            print(f"{name}: {properties(compiled) if compiled is not None else 'inside LLMPipeline, not readable'}")
    times = {name: [] for name in rows}
    loads = [os.getloadavg()]
    for round_index in range(args.rounds):
        names = list(rows)
        for name in names[round_index % len(names):] + names[:round_index % len(names)]:  # each goes first in turn
            settle()
            times[name].append(1000 * rows[name][0](rng.integers(0, shape.vocab_size, args.prompt_len)))
        loads.append(os.getloadavg())
    first = next(iter(rows))
    print(f"\nprefill of {args.prompt_len} random tokens to the first token, batch 1, {args.threads} threads, median of {args.rounds} interleaved rounds")
    print(f"| row | TTFT | / {first}'s, same round | each round |\n|---|---:|---:|---|")
    for name in rows:
        ratio = statistics.median(a / b for a, b in zip(times[name], times[first]))
        print(f"| {name} | {statistics.median(times[name]):,.0f} ms | {ratio:.2f}x | {', '.join(f'{t:,.0f}' for t in times[name])} |")
    print("load average (1, 5, 15 min) before and after each round:", ", ".join("/".join(f"{x:.1f}" for x in load) for load in loads))
    if args.profile is not None:
        profiled = args.profile or [name for name in rows if name == "fused-ir" or name.startswith("route-ir")]
        for name in profiled:  # the route's IR (its variants share its file) or the fused IR
            path = args.fused_ir if name == "fused-ir" else args.route / "openvino_model.xml"
            profile(name, rows[name][1], path, rng.integers(0, shape.vocab_size, args.prompt_len), 12 if len(profiled) > 1 else 30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
