"""aiopt quantize's default for a causal LM beside one call of each peer with its own defaults.

Every peer is built (and scored) first, then opened in a process of its own (`--same-process`: all
in this one, the protocol before 2026-12-07); then the timed runs are interleaved (round r times
every peer once, in turn), all on the same threads, each run on a fresh random prompt (no runtime's prefix cache can
serve it): time to first token at --prompt-len and decode tokens/s at batch 1 over --new-tokens
(greedy, end-of-text ignored), medians over --repeats rounds. Where a peer gives logits through
aiopt's runner interface it is also scored on the same held-out windows (perplexity, greedy
agreement with transformers FP32).

    python benchmarks/llm_peers.py                                  # gpt:tiny trained here (a dry run, a minute or two)
    python benchmarks/llm_peers.py --model base --prompt-len 512 --new-tokens 128 --write
    python benchmarks/llm_peers.py --model qwen0.5b --prompt-len 128 --new-tokens 128 --no-quality --aiopt-candidate ov-int8-asym --write

Peers (a peer that cannot run here is a row saying why):
- transformers eager FP32 and BF16 (AutoModelForCausalLM, DynamicCache; aiopt's loop);
- ONNX Runtime GenAI INT4: `python -m onnxruntime_genai.models.builder -p int4 -e cpu`, its own og.Generator loop;
- OpenVINO GenAI INT8 / INT4: `optimum-cli export openvino --weight-format int8|int4`, openvino_genai.LLMPipeline
  (prefix caching off).
  optimum-intel pulls a CUDA torch when installed plainly, so it lives in its own venv, with its own transformers
  5.5.4 (optimum-intel 2.2.0 wants <5.6; 5.25 breaks its import): --optimum-cli
  (default: $AIOPT_OPTIMUM_CLI, else /work/cache/optimum-venv/bin/optimum-cli, else optimum-cli on PATH);
- llama.cpp Q8_0 / Q4_K_M: GGUF written by aiopt's GGUFWriter route and llama.cpp's own quantizer
  (convert_hf_to_gguf.py refuses tokenizers trained here, docs/llm-quantize.md), run by llama-cpp-python.
A shared machine lowers every figure: the report gives the load average before and after.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from aiopt.artifacts import artifact_size  # noqa: E402 -- after the path of the checkout this script belongs to
from aiopt.machine import settle  # noqa: E402
from aiopt.llm.causal_lm import Shape, load_causal_lm  # noqa: E402
from aiopt.llm.generate import GenerateConfig, generate_ids  # noqa: E402
from aiopt.llm.kv_names import token_feed  # noqa: E402
from aiopt.llm.lm_quality import heldout_windows, score  # noqa: E402
from aiopt.llm.quantize import LMQuantizeConfig, quantize_causal_lm  # noqa: E402
from aiopt.llm.recipes_llamacpp import LlamaCppCausalLM, llamacpp_missing, quantize_gguf, write_f32_gguf  # noqa: E402

OPTIMUM_VENV_CLI = Path("/work/cache/optimum-venv/bin/optimum-cli")


class Peer:
    """One row: `build()` returns static fields and a timer, (function, *args) whose call opens the
    peer's artifact and returns its `once(prompt)` -> (ttft_s, decode tokens/s)."""

    def __init__(self, name: str, how: str, build):
        self.name, self.how, self.build = name, how, build
        self.row: dict = {"peer": name, "how": how}
        self.once = None
        self.runs: list[tuple[float, float]] = []

    def prepare(self, isolate: bool) -> None:
        start = time.perf_counter()
        try:
            fields, timer = self.build()
            self.row.update(fields)
            self.once = ProcessTimer(*timer) if isolate else timer[0](*timer[1:])
        except Exception as exc:  # noqa: BLE001 -- a peer that cannot run is a row saying why
            self.row["not_run"] = _why(exc)
        self.row["build_s"] = round(time.perf_counter() - start, 1)
        print(json.dumps(self.row, default=str), file=sys.stderr, flush=True)

    def time_once(self, prompt: np.ndarray) -> None:
        if self.once is None:
            return
        try:
            self.runs.append(self.once(prompt))
        except Exception as exc:  # noqa: BLE001
            self.row["not_run"] = f"timing failed: {_why(exc)}"[:400]
            self.close()

    def close(self) -> None:
        if isinstance(self.once, ProcessTimer):
            self.once.close()
        self.once = None

    def finish(self) -> dict:
        self.close()
        if self.runs and "not_run" not in self.row:
            self.row["ttft_ms"] = 1000 * statistics.median(r[0] for r in self.runs)
            self.row["tokens_per_s"] = statistics.median(r[1] for r in self.runs)
            self.row["rounds"] = [[round(1000 * ttft, 3), round(rate, 2)] for ttft, rate in self.runs]  # round by round, for paired ratios
        return self.row


def _why(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{exc.__class__.__name__}: {text.splitlines()[-1] if text else ''}"[:400]


class ProcessTimer:
    """A peer opened and timed in a process of its own (spawned, so nothing of this one's runtimes
    is inherited): no other runtime's thread pools, allocator arenas or loaded weights share its
    process, as in a deployment. The main process only sends prompts and waits on the pipe."""

    def __init__(self, function, *args):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, function, args), daemon=True)
        self.process.start()
        child.close()
        self._answer()  # opened and warmed up, or the reason it could not be

    def _answer(self):
        try:
            status, value = self.connection.recv()
        except EOFError:
            self.process.join(10)  # the pipe closes a moment before the exit code is set
            raise RuntimeError(f"the peer's process ended (exit code {self.process.exitcode})") from None
        if status == "error":
            raise RuntimeError(value)
        return value

    def __call__(self, prompt: np.ndarray) -> tuple[float, float]:
        self.connection.send(prompt)
        return self._answer()

    def close(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(OSError):
                self.connection.send(None)
            self.process.join(60)
        if self.process.is_alive():
            self.process.kill()


def _serve(connection, function, args) -> None:
    """The peer's process: open it (the timer function), then time each prompt received until None."""
    warnings.simplefilter("ignore")
    try:
        once = function(*args)
    except Exception as exc:  # noqa: BLE001 -- the reason goes back as the row's note
        connection.send(("error", _why(exc)))
        return
    connection.send(("ready", None))
    while (prompt := connection.recv()) is not None:
        try:
            connection.send(("ok", once(prompt)))
        except Exception as exc:  # noqa: BLE001
            connection.send(("error", _why(exc)))


def _runner_once(lm, new_tokens: int):
    config = GenerateConfig(max_new_tokens=new_tokens, stop_at_eos=False)

    def once(prompt: np.ndarray) -> tuple[float, float]:
        result = generate_ids(lm, prompt[None], config)
        return result.ttft_s, (new_tokens - 1) / result.decode_s

    generate_ids(lm, np.arange(8)[None], GenerateConfig(max_new_tokens=2, stop_at_eos=False))  # warm-up
    return once


# Timers: module-level functions (a spawned process finds them by name) that open one peer's
# artifact on `threads` threads and return its once(prompt), warmed up.
def transformers_timer(model: Path, dtype: str, threads: int, new_tokens: int):
    import torch

    from aiopt.llm.runners import TorchCausalLM

    torch.set_num_threads(threads)
    loaded, config = load_causal_lm(model)
    return _runner_once(TorchCausalLM(loaded.to(getattr(torch, dtype)), Shape.from_config(config)), new_tokens)


def aiopt_timer(folder: Path, threads: int, new_tokens: int):
    from aiopt.llm.open_artifact import open_causal_lm

    return _runner_once(open_causal_lm(folder, threads=threads)[0], new_tokens)


def llamacpp_timer(path: Path, shape: Shape, threads: int, new_tokens: int):
    return _runner_once(LlamaCppCausalLM(path, shape, threads), new_tokens)


def run(model: Path, work: Path, args) -> dict:
    import torch

    threads = args.threads
    torch.set_num_threads(threads)
    model_torch, config = load_causal_lm(model)
    shape = Shape.from_config(config)
    prompt_len = min(args.prompt_len, (shape.context_length or 1 << 30) - args.new_tokens - 1)
    windows = None if args.no_quality else heldout_windows(model, min(128, (shape.context_length or 129) - 1), args.eval_tokens)
    state: dict = {"reference": None}

    def quality(open_lm) -> dict:
        """Scored on the held-out windows; `open_lm()` opens the peer's runner only when there are windows
        (with --no-quality the peer is opened once, in its timing process, and nowhere else)."""
        if windows is None:
            return {}
        result = score(open_lm(), windows)
        state["reference"] = state["reference"] or result
        reference = state["reference"]
        return {"perplexity": result.perplexity, "agreement": result.agreement(reference),
                "decode_perplexity_increase": result.decode_perplexity / reference.decode_perplexity - 1,
                "decode_agreement": result.agreement(reference, decoded_only=True)}

    def transformers_peer(dtype):
        def build():
            from aiopt.llm.runners import TorchCausalLM

            copy = model_torch if dtype is torch.float32 else load_causal_lm(model)[0].to(dtype)
            fields = {**quality(lambda: TorchCausalLM(copy, shape)), "size_bytes": sum(p.numel() * p.element_size() for p in copy.parameters())}
            return fields, (transformers_timer, model, str(dtype).removeprefix("torch."), threads, args.new_tokens)
        return build

    def aiopt_build():
        from aiopt.folder_io import read_metadata
        from aiopt.llm.open_artifact import open_causal_lm

        out = args.aiopt_folder or work / "aiopt"
        if args.aiopt_folder:  # written by an earlier aiopt quantize: timed and scored here, not chosen here
            metadata = read_metadata(out)
        else:
            settings = LMQuantizeConfig(prompt_len=prompt_len, new_tokens=args.new_tokens, eval_tokens=args.eval_tokens, threads=threads,
                                        candidates=tuple(args.aiopt_candidate or ()), min_agreement=args.min_agreement)
            with contextlib.redirect_stdout(sys.stderr):
                metadata = quantize_causal_lm(model, out, settings, force=True, say=lambda message: print(message, file=sys.stderr, flush=True))
        return ({"choice": f"{metadata['recipe']} on {metadata['runtime']}", **quality(lambda: open_causal_lm(out, threads=threads)[0]), "size_bytes": artifact_size(out)},
                (aiopt_timer, out, threads, args.new_tokens))

    def genai_build():
        from aiopt.llm.runners import GenAICausalLM

        out = _ort_genai_int4(model, work / "genai-int4")
        # its quality through GenAI's own runtime (a prefill's logits), as aiopt quantize scores its candidates
        return ({**quality(lambda: GenAICausalLM(out, shape, threads)), "size_bytes": artifact_size(out), "note": "timed in its own generator loop"},
                (genai_timer, out, threads, args.new_tokens))

    def openvino_build(precision):
        def build():
            out = _optimum_export(model, work / f"ov-{precision}", precision, args.optimum_cli)
            return ({**quality(lambda: OptimumIRRunner(out / "openvino_model.xml", threads)), "size_bytes": artifact_size(out),
                     "note": "timed in its own loop (LLMPipeline); scored by prefill and decode steps on the same IR in OpenVINO with its defaults"},
                    (openvino_genai_timer, out, threads, args.new_tokens))
        return build

    def llamacpp_build(gguf_type):
        def build():
            why = llamacpp_missing(model)
            if why:
                raise RuntimeError(why)
            f32 = work / "gguf" / "model-f32.gguf"
            if not f32.is_file():
                f32.parent.mkdir(parents=True, exist_ok=True)
                write_f32_gguf(model, f32)
            path = quantize_gguf(f32, work / "gguf" / f"model-{gguf_type}.gguf", gguf_type, threads)
            return {**quality(lambda: LlamaCppCausalLM(path, shape, threads)), "size_bytes": path.stat().st_size}, (llamacpp_timer, path, shape, threads, args.new_tokens)
        return build

    peers = [Peer("transformers eager FP32", "AutoModelForCausalLM, torch float32, DynamicCache", transformers_peer(torch.float32)),
             Peer("transformers eager BF16", "the same model cast to bfloat16", transformers_peer(torch.bfloat16)),
             Peer("aiopt quantize (default)", "aiopt quantize FOLDER: every candidate measured, the fastest within the floor"
                  + (f" (restricted to {', '.join(args.aiopt_candidate)})" if args.aiopt_candidate else ""), aiopt_build),
             Peer("ONNX Runtime GenAI INT4", "python -m onnxruntime_genai.models.builder -p int4 -e cpu; og.Generator", genai_build)]
    peers += [Peer(f"OpenVINO GenAI {p.upper()}", f"optimum-cli export openvino --weight-format {p}; openvino_genai.LLMPipeline",
                   openvino_build(p)) for p in ("int8", "int4")]
    peers += [Peer(f"llama.cpp {t}", f"GGUF F32 (gguf GGUFWriter) -> llama_model_quantize {t}; llama_cpp.Llama", llamacpp_build(t))
              for t in ("Q8_0", "Q4_K_M")]
    if args.peer:  # a subset, e.g. a rerun of the rows a previous run could not run
        peers = [peer for peer in peers if any(part.lower() in peer.name.lower() for part in args.peer)]
    load_before = list(os.getloadavg())
    for peer in peers:
        peer.prepare(isolate=not args.same_process)
    rng = np.random.default_rng(0)
    for round_ in range(args.repeats):
        prompt = rng.integers(0, shape.vocab_size, prompt_len)
        order = peers if round_ % 2 == 0 else peers[::-1]  # alternate the order so no peer always runs right after another
        for peer in order:
            settle()  # not in the wake of the previous peer's spinning threads
            peer.time_once(prompt)
        print(f"round {round_ + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    rows = [peer.finish() for peer in peers]
    return {"model": str(model), "shape": shape.__dict__, "prompt_len": prompt_len, "new_tokens": args.new_tokens, "repeats": args.repeats,
            "eval_tokens": int(windows.size - len(windows)) if windows is not None else 0, "rows": rows, "threads": threads,
            "load_average_before": load_before, "own_processes": not args.same_process, "load_average": list(os.getloadavg()), "machine": platform.node(),
            "equal_quality_peers": args.equal_quality_peer or [], "command": " ".join(["python", "benchmarks/llm_peers.py", *sys.argv[1:]])}


def _ort_genai_int4(model: Path, out: Path) -> Path:
    if (out / "genai_config.json").is_file():  # a build kept in --work from an earlier run is reused
        return out
    with tempfile.TemporaryDirectory() as cache:
        done = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(model), "-o", str(out), "-p", "int4",
                               "-e", "cpu", "-c", cache, "--extra_options", "hf_remote=false", "hf_token=false"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError((done.stderr or done.stdout).strip().splitlines()[-1])
    return out


def genai_timer(out: Path, threads: int, new_tokens: int):
    import onnxruntime_genai as og

    config = og.Config(str(out))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    lm = og.Model(config)

    def once(prompt: np.ndarray) -> tuple[float, float]:
        params = og.GeneratorParams(lm)
        params.set_search_options(max_length=len(prompt) + new_tokens, min_length=len(prompt) + new_tokens, do_sample=False)
        generator = og.Generator(lm, params)
        start = time.perf_counter()
        generator.append_tokens(prompt.astype(np.int32))
        generator.generate_next_token()
        first = time.perf_counter()
        for _ in range(new_tokens - 1):
            generator.generate_next_token()
        end = time.perf_counter()
        made = len(generator.get_sequence(0)) - len(prompt)
        if made != new_tokens:  # a generator that stopped early would inflate tokens/s
            raise RuntimeError(f"ONNX Runtime GenAI made {made} tokens, not {new_tokens}")
        return first - start, (new_tokens - 1) / (end - first)

    once(np.arange(8))  # warm-up
    return once


def _optimum_cli(given: str | None) -> str:
    for candidate in (given, os.environ.get("AIOPT_OPTIMUM_CLI"), str(OPTIMUM_VENV_CLI) if OPTIMUM_VENV_CLI.is_file() else None,
                      shutil.which("optimum-cli")):
        if candidate:
            return candidate
    raise RuntimeError("optimum-cli (optimum-intel) is not installed; it pulls a CUDA torch into a plain install, so put it in its own venv "
                       "(python -m venv V; echo MAIN_SITE_PACKAGES > V/lib/python3.11/site-packages/main.pth; V/bin/pip install --no-deps "
                       "optimum-intel==2.2.0 optimum==2.3.0; V/bin/pip install transformers==5.5.4 'huggingface-hub<1.22', the newest optimum-intel 2.2.0 "
                       "accepts) and pass --optimum-cli V/bin/optimum-cli")


def _optimum_export(model: Path, out: Path, precision: str, optimum_cli: str | None) -> Path:
    if not (out / "openvino_model.xml").is_file():  # an export kept in --work from an earlier run is reused
        done = subprocess.run([_optimum_cli(optimum_cli), "export", "openvino", "--model", str(model), "--task", "text-generation-with-past",
                               "--weight-format", precision, str(out)], capture_output=True, text=True, check=False)
        if done.returncode != 0:  # the exception's own line (a traceback's last line may be one of a list it prints)
            lines = (done.stderr or done.stdout).strip().splitlines()
            raise RuntimeError(next((line for line in reversed(lines) if "Error:" in line), lines[-1] if lines else "no output").strip())
    return out


def openvino_genai_timer(out: Path, threads: int, new_tokens: int):
    import openvino as ov
    import openvino_genai

    scheduler = openvino_genai.SchedulerConfig()
    scheduler.enable_prefix_caching = False  # else a repeated prompt's prefill comes from its cache (TTFT 25 ms, issue 27)
    pipe = openvino_genai.LLMPipeline(str(out), "CPU", scheduler_config=scheduler, INFERENCE_NUM_THREADS=threads)
    config = openvino_genai.GenerationConfig()
    config.max_new_tokens = config.min_new_tokens = new_tokens
    config.ignore_eos = True
    config.do_sample = False

    def once(prompt: np.ndarray) -> tuple[float, float]:
        ids = prompt.astype(np.int64)[None]
        result = pipe.generate(openvino_genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids))), config)
        metrics = result.perf_metrics
        made = metrics.get_num_generated_tokens()
        if made != new_tokens:
            raise RuntimeError(f"OpenVINO GenAI made {made} tokens, not {new_tokens}")
        return metrics.get_ttft().mean / 1000, 1000 / metrics.get_tpot().mean  # ms -> s; time per output token -> tokens/s

    once(np.arange(8))  # warm-up
    return once


class OptimumIRRunner:
    """An Optimum-Intel IR (stateful: input_ids, attention_mask, position_ids, beam_idx -> logits,
    the KV cache in the request's state) behind aiopt's runner interface, compiled by OpenVINO with
    its own defaults as LLMPipeline's plugin is: what scores the OpenVINO GenAI rows' quality on the
    held-out windows as every other row is scored, a prefill then decode steps through the state
    (the pipeline's own paged KV cache is not what this reads back)."""

    def __init__(self, xml: Path, threads: int):
        import openvino as ov

        self.compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_NUM_THREADS": threads})
        self.inputs = {name for port in self.compiled.inputs for name in port.get_names()}

    def _infer(self, request, ids: np.ndarray, past: int) -> np.ndarray:
        feed = {**token_feed(ids, past, "attention_mask" in self.inputs, "position_ids" in self.inputs),
                "beam_idx": np.arange(ids.shape[0], dtype=np.int32)}  # Optimum's stateful IR reorders its cache by beam
        return request.infer({k: v for k, v in feed.items() if k in self.inputs})["logits"].copy()

    def prefill(self, ids: np.ndarray, last_only: bool = False):
        request = self.compiled.create_infer_request()  # a fresh state
        logits = self._infer(request, ids, 0)
        return (logits[:, -1:] if last_only else logits), (request, ids.shape[1])

    def step(self, tokens: np.ndarray, state):
        request, past = state
        return self._infer(request, np.asarray(tokens).reshape(-1, 1), past)[:, -1:], (request, past + 1)


FLOOR_PERPLEXITY, FLOOR_AGREEMENT = LMQuantizeConfig.max_perplexity_increase, LMQuantizeConfig.min_agreement


def markdown(document: dict) -> str:
    before, load = document["load_average_before"], document["load_average"]
    measured = [r for r in document["rows"] if r.get("tokens_per_s")]
    best = max((r["tokens_per_s"] for r in measured if not r["peer"].startswith("aiopt")), default=None)
    reference = next((r for r in document["rows"] if r["peer"] == "transformers eager FP32" and r.get("perplexity")), None)

    assumed = [name.lower() for name in document.get("equal_quality_peers") or ()]

    def equal_quality(r: dict) -> bool | None:  # aiopt quantize's default floor, against transformers FP32
        if r.get("perplexity") is None and any(name in r["peer"].lower() for name in assumed):
            return True  # unscored (random weights): of equal quality by precision, as --equal-quality-peer says
        if reference is None or r.get("perplexity") is None:
            return None
        return (r["perplexity"] <= reference["perplexity"] * (1 + FLOOR_PERPLEXITY) and r["agreement"] >= FLOOR_AGREEMENT
                and r.get("decode_perplexity_increase", 0) <= FLOOR_PERPLEXITY and r.get("decode_agreement", 1) >= FLOOR_AGREEMENT)
    lines = [f"# aiopt quantize beside its peers: {document['model']}", "",
             f"`{document['command']}` on {document['machine']}: prompt {document['prompt_len']} random tokens (a fresh prompt each round), "
             f"{document['new_tokens']} new tokens greedy at batch 1, peers interleaved"
             f"{', each timed in a process of its own' if document.get('own_processes') else ', all timed in one process'}, median of {document['repeats']} rounds; "
             f"{document['threads']} threads for every peer; perplexity/agreement on {document['eval_tokens']} held-out sotu test tokens "
             f"(agreement with transformers FP32; each window half prefilled, half decoded through the peer's KV cache, "
             f"and the floor holds on both). Load average before {before[0]:.2f}, after {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}"
             " (on a shared machine the figures are not evidence of speed).", "",
             "| peer | perplexity | agreement (decode steps) | equal quality | size | TTFT | decode tok/s | vs fastest peer | note |",
             "|---|---:|---:|---|---:|---:|---:|---:|---|"]
    for r in document["rows"]:
        if "not_run" in r:
            lines.append(f"| {r['peer']} | - | - | - | - | - | - | - | not run: {r['not_run']} |")
            continue
        quality = (f"{r['perplexity']:.3f} | {r['agreement']:.3f} ({r.get('decode_agreement', float('nan')):.3f})"
                   if r.get("perplexity") is not None else "- | -")
        ratio = f"{r['tokens_per_s'] / best:.2f}x" if best and r.get("tokens_per_s") else "-"
        same = {True: "yes", False: "no", None: "not scored"}[equal_quality(r)]
        lines.append(f"| {r['peer']} | {quality} | {same} | {r['size_bytes'] / 2**20:.1f} MiB | {r.get('ttft_ms', float('nan')):.1f} ms | "
                     f"{r.get('tokens_per_s', float('nan')):.1f} | {ratio} | {r.get('choice') or r.get('note') or ''} |")
    ours = next((r for r in measured if r["peer"].startswith("aiopt")), None)
    peers = [r for r in measured if not r["peer"].startswith("aiopt") and equal_quality(r)]
    if ours and peers:
        top, first = max(peers, key=lambda r: r["tokens_per_s"]), min(peers, key=lambda r: r["ttft_ms"])
        basis = (f"perplexity within {FLOOR_PERPLEXITY:.0%} of transformers FP32, agreement at least {FLOOR_AGREEMENT}" if not assumed
                 else f"by precision: {', '.join(document['equal_quality_peers'])}")
        lines += ["", f"aiopt's default against the peers of equal quality ({basis}), as the median of its round-by-round ratios "
                  f"(each round times every peer once, so a drift of the machine between rounds cancels): decode "
                  f"{paired_ratio(ours, top, 1)} the fastest decoder, {top['peer']} ({ours['tokens_per_s']:.1f} against "
                  f"{top['tokens_per_s']:.1f} tok/s as medians); time to first token {paired_ratio(ours, first, 0)} the quickest, "
                  f"{first['peer']} ({ours['ttft_ms']:.1f} against {first['ttft_ms']:.1f} ms; below 1 is sooner)."]
    return "\n".join(lines) + "\n"


def paired_ratios(ours: dict, peer: dict, column: int) -> list[float]:
    """ours / peer round by round in one column of `rounds` (0: TTFT, 1: decode tokens/s)."""
    pairs = list(zip(ours.get("rounds") or (), peer.get("rounds") or ()))
    if not pairs:  # a document written before rounds were kept
        key = ("ttft_ms", "tokens_per_s")[column]
        return [ours[key] / peer[key]]
    return [a[column] / b[column] for a, b in pairs]


def paired_ratio(ours: dict, peer: dict, column: int) -> str:
    """The median of the round-by-round ratios in bold, with their range and the rounds where aiopt
    was ahead (decode: faster; TTFT: sooner), so one lucky round cannot carry the claim unseen."""
    ratios = paired_ratios(ours, peer, column)
    ahead = sum(r > 1 if column == 1 else r < 1 for r in ratios)
    spread = f" (rounds {min(ratios):.2f}-{max(ratios):.2f}x, ahead in {ahead} of {len(ratios)})" if len(ratios) > 1 else ""
    return f"**{statistics.median(ratios):.2f}x**{spread}"


def _trained(name: str, folder: Path) -> Path:
    """gpt:tiny or gpt:base trained by aiopt train into folder (reused when present)."""
    if not (folder / "model.safetensors").is_file():
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT.parent), os.environ.get("PYTHONPATH", "")])}
        subprocess.run([sys.executable, "-m", "aiopt", "train", name, "-o", str(folder)], check=True, stdout=sys.stderr, env=env)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a causal-LM Hugging Face folder; `base`: gpt:base in benchmarks/.work/base/gpt (trained when "
                        "missing); `qwen0.5b`: Qwen2.5-0.5B's configuration with random weights (benchmarks/llm.py's, cached in "
                        "benchmarks/.work); default: gpt:tiny, the dry run")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eval-tokens", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-quality", action="store_true", help="skip perplexity/agreement (random weights: speed only)")
    parser.add_argument("--min-agreement", type=float, default=LMQuantizeConfig.min_agreement,
                        help="aiopt quantize's agreement floor; random weights (the 0.5B configuration) agree by small margins that "
                             "say nothing of quality, so the speed run may relax it, said in the results' command line")
    parser.add_argument("--aiopt-candidate", action="append", help="restrict aiopt quantize to these candidates (repeatable): the 0.5B run "
                        "uses the precision aiopt chose for gpt:base")
    parser.add_argument("--peer", action="append", help="run only the peers whose name contains this (repeatable, case-insensitive): "
                        "aiopt, transformers, GenAI, OpenVINO, llama.cpp, Q8_0...")
    parser.add_argument("--equal-quality-peer", action="append", help="with --no-quality: the peers (name contains this, repeatable) "
                        "taken as of aiopt's quality by precision, e.g. Q8_0 and INT8 beside 8-bit aiopt candidates")
    parser.add_argument("--optimum-cli", help="optimum-cli of a venv holding optimum-intel (see the docstring)")
    parser.add_argument("--work", type=Path, help="keep the built artifacts here (default: a temporary folder)")
    parser.add_argument("--aiopt-folder", type=Path, help="time and score this folder, written by an earlier aiopt quantize, instead of "
                        "running aiopt quantize here (a probe; the results' command line says so)")
    parser.add_argument("--same-process", action="store_true", help="time every peer in this process (the old protocol) instead of each "
                        "in a process of its own")
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/llm-peers-<model>-<machine>.{json,md}")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory(prefix="aiopt-llm-peers-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        label = args.model or "tiny"
        if args.model == "base":
            model = _trained("gpt:base", ROOT / ".work" / "base" / "gpt")
        elif args.model == "qwen0.5b":
            from llm import build_qwen_folder  # benchmarks/llm.py: the 0.5B configuration, cached

            cache = ROOT / ".work"
            model = build_qwen_folder(cache / "qwen2.5-0.5b-config-seed0", _trained("gpt:tiny", cache / "gpt-tiny"))
        elif args.model:
            model, label = Path(args.model), Path(args.model).name
        else:
            model = _trained("gpt:tiny", work / "gpt-tiny")
        document = run(model, work, args)
    text = markdown(document)
    print(text)
    if args.write:
        out = ROOT / "results" / f"llm-peers-{label}-{platform.node() or 'machine'}"
        out.parent.mkdir(exist_ok=True)
        out.with_name(out.name + ".json").write_text(json.dumps(document, indent=2, default=str))  # not with_suffix: "qwen0.5b" has a dot
        out.with_name(out.name + ".md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
