"""Pick by measurement: run every candidate on held-out data, drop those below the quality
floor, time the rest here (interleaved, at the asked batch sizes) and keep the fastest.

"Fastest" is the geometric mean of p50 over the batch sizes. Candidates within `TIE` of the
fastest are treated as equally fast (the machines are shared and noisy) and the smallest of
them wins: that is how weight-only INT8 ships when it costs no speed, and never when it does.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aiopt.errors import AioptError
from aiopt.evaluate import run_batches
from aiopt.fileio import human_size
from aiopt.hardware import detect_cpu
from aiopt.measure.deployed import batch_feed
from aiopt.measure.latency import LatencyConfig, measure_interleaved_steady
from aiopt.measure.quality import QualityFloor, compare_all, compare_one, compare_outputs
from aiopt.measure.streaming import run_streams, stream_plan
from aiopt.quantize.candidates import Candidate
from aiopt.runtime import runner_for
from aiopt.runtime.dispatch import dispatch_rule, route_for

TIE = 0.03
QUICK = LatencyConfig(warmup=3, min_runs=5, min_time=0.25, rounds=3)
CONFIRM = LatencyConfig(warmup=5, min_runs=10, min_time=1.0, rounds=5)
CONFIRM_TOP = 3
UNSTEADY_VERDICT = " [timing unsteady, the choice may be wrong: re-run on a quiet machine]"

TOO_LARGE = "larger than the input"  # a candidate ruled out by size alone (the quality floor was met)


@dataclass
class Selection:
    chosen: Candidate | None
    candidates: list[Candidate]
    reference: Candidate
    batch_sizes: tuple[int, ...]
    floor: QualityFloor
    verdict: str  # one line for the user
    notes: list[str] = field(default_factory=list)

    def speedup(self, candidate: Candidate, batch: int) -> float | None:
        base = self.reference.latency_ms.get(batch)
        return round(base / candidate.latency_ms[batch], 3) if base and candidate.latency_ms.get(batch) else None

    def to_dict(self) -> dict:
        return {"chosen": self.chosen.name if self.chosen else None, "verdict": self.verdict, "floor": self.floor.to_dict(),
                "batch_sizes": list(self.batch_sizes), "reference": self.reference.name, "tie_tolerance": TIE,
                "score": "geometric mean of p50 over the batch sizes", "notes": self.notes,
                "candidates": [{**c.to_dict(), "speedup_vs_fp32": {str(b): self.speedup(c, b) for b in self.batch_sizes},
                                **({"quality_summary": self.floor.summary(c.quality)} if self.floor.judges and c.quality else {})}
                               for c in self.candidates]}


def make_runner(candidate: Candidate, spec, threads: int | None = None, outputs=None):
    """The Runner the candidate would ship with (its runtime; by-batch routes; padding trimmed
    when it says so), made by the one runner factory, `runtime.runner_for`."""
    backend = None if candidate.runtime == "dispatch" else candidate.runtime
    return runner_for(candidate.as_loaded(spec, outputs), backend=backend, threads=threads, work_routes=True)


@dataclass
class Reference:
    """What every candidate is compared with: the FP32 graph's outputs on the evaluation data
    (every output), and, for a stateful model, its outputs run as streams feeding back its own
    state (`pairs`: input -> output)."""

    outputs: list[np.ndarray]
    pairs: dict[str, str] = field(default_factory=dict)
    streamed: dict[str, np.ndarray] | None = None
    note: str | None = None  # why there is no streaming check although state pairs were found

    @classmethod
    def measure(cls, runner, data, pairs: dict[str, str] | None = None) -> "Reference":
        pairs = dict(pairs or {})
        outputs = run_batches(runner, data)
        try:
            return cls(outputs, pairs, run_streams(runner, data, pairs) if pairs else None)
        except AioptError as exc:  # too few samples to stream, or state that cannot be fed back as is: chunk by chunk only
            return cls(outputs, {}, None, f"no streaming check ({exc})")

    def judge(self, runner, data, floor: QualityFloor, produced: list[np.ndarray] | None = None) -> dict:
        """Quality of `runner` on `data`: every output chunk by chunk, and streaming for a stateful
        model (each run feeds back its own state); the floor judges both, the worse decides."""
        produced = produced if produced is not None else run_batches(runner, data)
        if not floor.judges:
            return compare_outputs(self.outputs[0], produced[0], data.labels)
        quality = compare_all(self.outputs, produced, floor.judges, data.labels)
        if self.streamed is not None:
            streamed = run_streams(runner, data, self.pairs)
            states = set(self.pairs.values())
            judged = [j for j in floor.judges if j.name not in states] or list(floor.judges)
            streams, steps = stream_plan(len(data))
            quality["streaming"] = {"streams": streams, "steps": steps, "state": dict(self.pairs),
                                    "outputs": {j.name: compare_one(self.streamed[j.name], streamed[j.name], j) for j in judged}}
            quality["finite"] = quality["finite"] and all(o["finite"] for o in quality["streaming"]["outputs"].values())
        for judge in floor.judges:  # every output's verdict travels with its figures (reports, metadata)
            for figures in (quality["outputs"], (quality.get("streaming") or {}).get("outputs", {})):
                if judge.name in figures:
                    figures[judge.name]["verdict"] = floor.output_problem(judge, figures[judge.name]) or "ok"
        return quality


def measure_quality(candidates: list[Candidate], reference: Reference, data, spec, floor: QualityFloor, say, outputs=None) -> dict[str, object]:
    """Quality of each candidate on `data`; returns the runners of those that meet the floor."""
    runners = {}
    for candidate in candidates:
        if candidate.problem:
            continue
        try:
            runner = make_runner(candidate, spec, outputs=outputs)
            candidate.quality = reference.judge(runner, data, floor)
        except AioptError as exc:
            candidate.problem = f"failed to run: {exc}"
            continue
        candidate.problem = floor.problem(candidate.quality)
        say(f"{candidate.name} on {candidate.runtime}: {floor.summary(candidate.quality)}"
            + (f" (below the floor: {candidate.problem})" if candidate.problem else ""))
        if not candidate.problem:
            runners[candidate.name] = runner
    return runners


def measure_speed(candidates: list[Candidate], runners: dict, data, spec, batch_sizes: tuple[int, ...], say, config: LatencyConfig = QUICK) -> None:
    """p50 of every runnable candidate at each batch size, all candidates interleaved (all again,
    once, when a figure says the machine was busy; one still unsteady is flagged on its candidate)."""
    timed = [c for c in candidates if c.name in runners]
    for batch in batch_sizes:
        feed = batch_feed(data, spec, batch)
        stats, again = measure_interleaved_steady([(lambda r=runners[c.name]: r(feed), False) for c in timed], config)
        for candidate, stat in zip(timed, stats):
            candidate.latency_ms[batch] = stat.p50
            candidate.unsteady.pop(batch, None)
            if stat.unsteady:
                candidate.unsteady[batch] = stat.unsteady
        say(f"batch {batch}{' (measured twice: the machine was busy)' if again else ''}: "
            + ", ".join(f"{c.name} {c.latency_ms[batch]:.3f} ms" + (" (unsteady)" if batch in c.unsteady else "") for c in timed))


def confirm_fastest(candidates: list[Candidate], reference: Candidate, runners: dict, data, spec, batch_sizes: tuple[int, ...],
                    eligible: set[str], say, keep: int = CONFIRM_TOP, extra: list[Candidate] = ()) -> list[Candidate]:
    """The quick timing ranks; this decides. The best few candidates (by geometric mean), the
    fastest at each batch size, `extra` ones (not timed yet) and the FP32 reference are timed
    again, longer and in more interleaved rounds, and their times replaced: a microsecond of
    noise must not decide "slower than FP32" at batch 1. Returns the candidates of that run."""
    timed = [c for c in candidates if c.name in runners and c.name in eligible and c is not reference
             and all(b in c.latency_ms for b in batch_sizes)]
    ranked = sorted(timed, key=lambda c: _geomean(c, batch_sizes))
    finalists = [reference, *ranked[:keep]]
    for batch in batch_sizes:
        fastest = min(timed, key=lambda c: c.latency_ms[batch], default=None)
        if fastest is not None and fastest not in finalists:
            finalists.append(fastest)
    finalists += [c for c in extra if c.name in runners and c not in finalists]
    if len(finalists) < 2:
        return finalists
    say(f"confirming the fastest: {', '.join(c.name for c in finalists)}")
    measure_speed(finalists, runners, data, spec, batch_sizes, say, CONFIRM)
    return finalists


def choose(candidates: list[Candidate], reference: Candidate, batch_sizes: tuple[int, ...], floor: QualityFloor,
           eligible: set[str] | None = None, max_size_bytes: int | None = None) -> Selection:
    """The fastest candidate that meets the floor (of the `eligible` names, when given) and,
    with `max_size_bytes`, ships no more bytes than that (main file and companions); when a
    faster but larger one is left out, a note says which and by how much."""
    if max_size_bytes is not None:
        unlimited = choose(candidates, reference, batch_sizes, floor, eligible)
        for c in candidates:
            if not c.problem and c is not reference and c.size_bytes > max_size_bytes:
                c.problem = f"{TOO_LARGE}: {human_size(c.size_bytes)} > {human_size(max_size_bytes)} (--objective latency allows it)"
        selection = choose(candidates, reference, batch_sizes, floor, eligible)
        faster = unlimited.chosen
        if faster is not None and selection.chosen is not None and faster is not selection.chosen and faster.problem:
            gain = ", ".join(f"{selection.chosen.latency_ms[b] / faster.latency_ms[b]:.2f}x at batch {b}" for b in batch_sizes)
            selection.notes.append(f"not shipped: {faster.name} ({gain} vs the chosen {selection.chosen.name}) is {human_size(faster.size_bytes)}, "
                                   f"larger than the input ({human_size(max_size_bytes)}); --objective latency ships it")
        return selection
    timed = [c for c in candidates if not c.problem and all(b in c.latency_ms for b in batch_sizes)
             and (eligible is None or c.name in eligible)]
    if not timed:
        return Selection(None, candidates, reference, batch_sizes, floor, "no candidate meets the quality floor")

    def score(c: Candidate) -> float:
        return _geomean(c, batch_sizes)

    # Never slower than FP32 on ONNX Runtime at any asked batch size: a candidate that wins on
    # the mean but loses at batch 1 would make some user's service slower.
    timed = [c for c in timed if c is reference or all(c.latency_ms[b] <= reference.latency_ms[b] * (1 + TIE) for b in batch_sizes)] or timed
    fastest = min(timed, key=score)
    tied = [c for c in timed if score(c) <= score(fastest) * (1 + TIE)]
    chosen = min(tied, key=lambda c: (c.size_bytes, score(c)))
    selection = Selection(chosen, candidates, reference, batch_sizes, floor, "")
    ratios = ", ".join(f"{selection.speedup(chosen, b):.2f}x at batch {b}" for b in batch_sizes)
    reduced = [c for c in candidates if not c.problem and c.precision != "fp32"]
    if chosen.precision == "fp32":
        why = "no reduced-precision candidate meets the floor" if not reduced else "no reduced-precision candidate beats the fastest FP32 one"
        selection.verdict = f"{why}: writing FP32 for {chosen.runtime} ({ratios} vs FP32 ONNX Runtime)"
    else:
        selection.verdict = f"{chosen.name} on {chosen.runtime}: {ratios} vs FP32 ONNX Runtime, within the floor ({floor.describe()})"
    if chosen is not fastest:
        selection.notes.append(f"{chosen.name} is within {TIE:.0%} of the fastest ({fastest.name}) and smaller: chosen")
    behind = {id(c): c for c in (chosen, reference, fastest)}.values()
    flagged = {f"{c.name} batch {b}": why for c in behind for b, why in c.unsteady.items()}
    if flagged:  # a choice made from a figure the machine disturbed says so
        selection.verdict += UNSTEADY_VERDICT
        selection.notes.append("unsteady timing behind this choice: " + "; ".join(f"{k}: {v}" for k, v in flagged.items()))
    return selection


def twins_on_other_runtime(candidates: list[Candidate]) -> list[Candidate]:
    """The same INT8 file on the other runtime (ONNX Runtime and OpenVINO both run QDQ graphs
    in INT8; OpenVINO keeps INT8-stored weights compressed), for the candidates that met the
    floor; each twin is measured like any other."""
    other = {"onnxruntime": "openvino", "openvino": "onnxruntime"}
    have = {(c.path, c.runtime) for c in candidates}
    twins = []
    for c in candidates:
        if c.problem or not c.precision.startswith("int8") or (c.path, other[c.runtime]) in have:
            continue
        twins.append(Candidate(f"{c.name}@{other[c.runtime]}", c.precision, other[c.runtime], c.path, dict(c.recipe)))
    return twins


def by_batch(finalists: list[Candidate], batch_sizes: tuple[int, ...], floor: QualityFloor) -> list[Candidate]:
    """When the fastest candidate differs by batch size (timed in one run: `finalists`), the
    artifact that routes every batch size to its fastest (runtime/dispatch.py): the same file on
    two runtimes, or two files (e.g. dynamic INT8 on ONNX Runtime for batch 1, NNCF INT8 in BF16
    on OpenVINO for batch 64). Its quality is its worst route's; its size, its files' sum."""
    routable = [c for c in finalists if not c.problem and c.runtime != "dispatch" and all(b in c.latency_ms for b in batch_sizes)]
    if len(batch_sizes) < 2 or len(routable) < 2:
        return []
    by_name = {c.name: c for c in routable}
    # a route within TIE of the fastest that runs a file another batch size already runs wins: one file less to ship
    rule = dispatch_rule({c.name: c.latency_ms for c in routable}, key="candidate", tie=TIE, group={c.name: str(c.path) for c in routable})
    if len(rule) < 2:
        return []
    members = [by_name[route["candidate"]] for route in rule]
    served_by = [(route["max_batch"], c) for route, c in zip(rule, members)]
    routes = [{**route, "runtime": c.runtime, "path": str(c.path), "serving": dict(c.serving)} for route, c in zip(rule, members)]
    worst = min(members, key=lambda c: floor.value(c.quality))
    main = members[-1]  # the largest batches' file is the one a batching server (Triton) loads
    files = {str(c.path) for c in members}
    if len(files) == 1:
        name = f"{min((c.name for c in members), key=len).split('@')[0].removesuffix('+bf16')}-by-batch"
    else:
        name = "by-batch:" + "/".join(c.name for c in members)
    precision = next((c.precision for c in members if c.precision == "int8"), main.precision)
    return [Candidate(name, precision, "dispatch", main.path,
                      {"dispatch": routes, "from": [c.name for c in members], "latency": "per batch, the route's p50 in this run"},
                      quality=worst.quality, latency_ms={b: route_for(served_by, b).latency_ms[b] for b in batch_sizes},
                      files=sorted(Path(f) for f in files),
                      unsteady={b: route_for(served_by, b).unsteady[b] for b in batch_sizes if b in route_for(served_by, b).unsteady})]


def single_threaded(candidates: list[Candidate], batch_sizes: tuple[int, ...], eligible: set[str], count: int = 2) -> list[Candidate]:
    """The `count` fastest candidates at the smallest batch size, run on one thread: a small
    model's batch 1 often runs faster on one thread than on two, which spend more time handing
    work over than doing it (measured here, not assumed; a route of a by-batch artifact may use it)."""
    smallest = min(batch_sizes)
    timed = [c for c in candidates if not c.problem and c.name in eligible and c.runtime != "dispatch" and smallest in c.latency_ms
             and not c.serving.get("threads")]
    if len(os.sched_getaffinity(0)) < 2:
        return []
    return [Candidate(f"{c.name}+1-thread", c.precision, c.runtime, c.path, dict(c.recipe), serving={**c.serving, "threads": 1})
            for c in sorted(timed, key=lambda c: c.latency_ms[smallest])[:count]]


def bf16_on_openvino(candidates: list[Candidate]) -> list[Candidate]:
    """Each OpenVINO candidate that met the floor, run with OpenVINO's bfloat16 inference
    precision as well, on CPUs with BF16 units (what OpenVINO does by default there; aiopt pins
    FP32 unless a measured artifact asks for BF16)."""
    if not detect_cpu().has_bf16:
        return []
    return [Candidate(f"{c.name}+bf16", "bf16" if c.precision == "fp32" else c.precision, "openvino", c.path, dict(c.recipe),
                      serving={**c.serving, "inference_precision": "bf16"})
            for c in candidates if c.runtime == "openvino" and not c.problem and "inference_precision" not in c.serving]



def _geomean(c: Candidate, batch_sizes: tuple[int, ...]) -> float:
    return math.exp(sum(math.log(c.latency_ms[b]) for b in batch_sizes) / len(batch_sizes))
