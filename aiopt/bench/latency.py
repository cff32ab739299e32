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
    if cuda:
        return summarize(_timed_cuda(run, config))
    times: list[float] = []
    clock = time.perf_counter
    deadline = clock() + config.min_time
    while len(times) < config.max_runs and (len(times) < config.min_runs or clock() < deadline):
        start = clock()
        run()
        times.append((clock() - start) * 1e3)
    return summarize(times)


def _timed_cuda(run: Callable[[], object], config: LatencyConfig) -> list[float]:
    import torch

    torch.cuda.synchronize()
    times: list[float] = []
    deadline = time.perf_counter() + config.min_time
    while len(times) < config.max_runs and (len(times) < config.min_runs or time.perf_counter() < deadline):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(float(start.elapsed_time(end)))
    return times
