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

from aiopt.options import option


@dataclass(frozen=True)
class LatencyConfig:
    warmup: int = option(10, "--warmup", "Untimed runs before timing.")
    min_runs: int = option(20, "--min-runs", "Timed runs, at least.")
    min_time: float = option(1.0, "--min-time", "Seconds of timed runs per measurement, at least.")
    max_runs: int = 100_000
    # measure_interleaved splits each measurement's timed runs into this many slices, taken in
    # turn with the other measurements of the run: a slow spell of a shared machine then lands
    # on all of them alike instead of on whichever ran during it.
    rounds: int = option(3, "--rounds", "Slices each measurement is timed in, interleaved with the others (drift hits all alike).")


# When a figure cannot be trusted: its runs spread too far (p90 over p50), or its interleaved
# rounds disagree (slowest round's p50 over the fastest's). A quiet machine stays well inside
# both (tiny models on 2 shared cores: p90/p50 about 1.1-1.5, rounds within 20%); a busy one
# left p90 121 ms beside p50 0.30 ms.
MAX_SPREAD = 2.0
MAX_ROUND_DISAGREEMENT = 1.5


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
    round_p50: tuple[float, ...] = ()  # p50 of each interleaved round (measure_interleaved)

    @property
    def unsteady(self) -> str | None:
        """Why this figure says the machine was busy while it was taken, or None."""
        return unsteady(self.p50, self.p90, self.round_p50)

    def to_dict(self) -> dict:
        data = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        data["round_p50"] = [round(v, 6) for v in self.round_p50]
        data["unsteady"] = self.unsteady
        return data


def unsteady(p50: float, p90: float, round_p50=()) -> str | None:
    """One short reason when a measurement's spread or its rounds' disagreement is beyond what
    a quiet machine gives (MAX_SPREAD, MAX_ROUND_DISAGREEMENT), else None."""
    reasons = []
    if p50 > 0 and p90 / p50 > MAX_SPREAD:
        reasons.append(f"p90 {p90 / p50:.1f}x p50")
    rounds = [r for r in round_p50 if r > 0]
    if len(rounds) > 1 and max(rounds) / min(rounds) > MAX_ROUND_DISAGREEMENT:
        reasons.append(f"rounds' p50 differ {max(rounds) / min(rounds):.1f}x")
    return ("machine busy? " + ", ".join(reasons)) if reasons else None


def summarize(times_ms: list[float] | np.ndarray, rounds: list | None = None) -> LatencyStats:
    """Statistics of all times; `rounds`: the same times split by interleaved round."""
    t = np.asarray(times_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    round_p50 = tuple(float(np.percentile(r, 50)) for r in rounds if len(r)) if rounds else ()
    return LatencyStats(float(t.mean()), float(t.std()), float(p50), float(p90), float(p99), float(t.min()), float(t.max()), len(t), round_p50)


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
    times: list[list[list[float]]] = [[] for _ in runs]
    for round_index in range(rounds):
        for index, (run, cuda) in enumerate(runs):
            if on_slice:
                on_slice(round_index, index)
            for _ in range(min(2, config.warmup)):
                run()
            times[index].append(timed_runs(run, config.min_time / rounds, -(-config.min_runs // rounds), config.max_runs // rounds, cuda))
    return [summarize([x for part in t for x in part], t) for t in times]


def measure_interleaved_steady(runs: list[tuple[Callable[[], object], bool]], config: LatencyConfig = LatencyConfig(),
                               on_slice: Callable[[int, int], None] | None = None) -> tuple[list[LatencyStats], bool]:
    """measure_interleaved, and once more, all of them again, when any figure is unsteady: the
    ratios between them stay same-run ones. Returns (stats, whether it re-measured); a figure
    still unsteady after that carries its flag (LatencyStats.unsteady) for the reports."""
    stats = measure_interleaved(runs, config, on_slice)
    if not any(s.unsteady for s in stats):
        return stats, False
    return measure_interleaved(runs, config, on_slice), True


# "A few seconds": one timed run of the largest default batch size should not take longer.
SLOW_RUN_SECONDS = 2.0


def affordable_batch_sizes(run_at: Callable[[int], object], batch_sizes: tuple[int, ...],
                           seconds: float = SLOW_RUN_SECONDS) -> tuple[tuple[int, ...], str | None]:
    """The default batch sizes, the largest shrunk to what one run can do in `seconds`: runs at
    the smallest (the faster of two, after an untimed one) are extrapolated linearly, so a
    640x640 detector is not timed at batch 64 for an hour. Returns (sizes, a note for the user
    or None). Only for defaults: sizes a user asked for are theirs."""
    smallest, largest = min(batch_sizes), max(batch_sizes)
    run_at(smallest)
    times = []
    for _ in range(2):  # the faster of two: a second run can still pay for lazy initialisation
        start = time.perf_counter()
        run_at(smallest)
        times.append(time.perf_counter() - start)
    per_sample = min(times) / smallest
    if per_sample * largest <= seconds:
        return tuple(batch_sizes), None
    fit = smallest
    while fit * 2 <= largest and per_sample * fit * 2 <= seconds:
        fit *= 2
    sizes = tuple(sorted({b for b in batch_sizes if b <= fit} | {fit}))
    return sizes, (f"one batch-{smallest} run takes {per_sample * smallest * 1e3:.0f} ms, so one at batch {largest} would take about "
                   f"{per_sample * largest:.0f} s: timing batch size(s) {', '.join(map(str, sizes))} instead (pass -b to choose)")


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
