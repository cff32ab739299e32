"""The one latency measurement every backend and command uses.

Warm-up runs first (allocators, lazy initialisation, autotuning), then timed runs until both
`min_time` seconds and `min_runs` runs are reached. Every run is kept: outliers are reported
(p99, max), not trimmed. Times are in milliseconds everywhere. On CUDA each run is bracketed by
CUDA events and synchronised, so asynchronous launches are not mistaken for fast ones.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class LatencyConfig:
    warmup: int = 10
    min_runs: int = 20
    min_time: float = 1.0  # seconds of timed runs, at least
    max_runs: int = 100_000
    # measure_interleaved splits each measurement's timed runs into this many slices, taken in
    # turn with the other measurements of the run: a slow spell of a shared machine then lands
    # on all of them alike instead of on whichever ran during it.
    rounds: int = 3


@dataclass(frozen=True)
class LatencyStats:
    mean: float
    std: float
    p50: float
    p90: float
    p99: float
    min: float
    max: float
    runs: int

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def summarize(times_ms: list[float] | np.ndarray) -> LatencyStats:
    t = np.asarray(times_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    return LatencyStats(float(t.mean()), float(t.std()), float(p50), float(p90), float(p99), float(t.min()), float(t.max()), len(t))


def measure_latency(run: Callable[[], object], config: LatencyConfig = LatencyConfig(), cuda: bool = False) -> LatencyStats:
    """Latency of `run()` (one inference, outputs materialised) in ms."""
    for _ in range(config.warmup):
        run()
    return summarize(timed_runs(run, config.min_time, config.min_runs, config.max_runs, cuda))


def measure_interleaved(runs: list[tuple[Callable[[], object], bool]], config: LatencyConfig = LatencyConfig(),
                        on_slice: Callable[[int, int], None] | None = None) -> list[LatencyStats]:
    """Latency of several `(run, cuda)` measured in `config.rounds` interleaved slices; each
    slice re-warms its run (caches cold from the others) and the slices' times are pooled.
    `on_slice(round, index)` is called before each slice (progress for a person)."""
    rounds = max(1, config.rounds)
    for run, _ in runs:
        for _ in range(config.warmup):
            run()
    times: list[list[float]] = [[] for _ in runs]
    for round_index in range(rounds):
        for index, (run, cuda) in enumerate(runs):
            if on_slice:
                on_slice(round_index, index)
            for _ in range(min(2, config.warmup)):
                run()
            times[index] += timed_runs(run, config.min_time / rounds, -(-config.min_runs // rounds), config.max_runs // rounds, cuda)
    return [summarize(t) for t in times]


def timed_runs(run: Callable[[], object], seconds: float, min_runs: int, max_runs: int, cuda: bool = False) -> list[float]:
    """Times of runs until both `seconds` and `min_runs` are reached (or `max_runs`)."""
    if cuda:
        return _timed_cuda(run, seconds, min_runs, max_runs)
    times: list[float] = []
    clock = time.perf_counter
    deadline = clock() + seconds
    while len(times) < max_runs and (len(times) < min_runs or clock() < deadline):
        start = clock()
        run()
        times.append((clock() - start) * 1e3)
    return times


def _timed_cuda(run: Callable[[], object], seconds: float, min_runs: int, max_runs: int) -> list[float]:
    import torch

    torch.cuda.synchronize()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() < deadline):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(float(start.elapsed_time(end)))
    return times
