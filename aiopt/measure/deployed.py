"""Measure an artifact as it would ship: on the runtime its metadata names, on held-out data,
timed in the same interleaved rounds as a reference so every ratio is a same-run ratio."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from aiopt.artifacts import artifact_size
from aiopt.evaluate import run_batches
from aiopt.measure.latency import LatencyConfig, measure_interleaved
from aiopt.measure.quality import QualityFloor, compare_outputs
from aiopt.runtime import load
from aiopt.specs import fixed_batch, to_model_layout


@dataclass
class Deployed:
    """What one measurement found: quality against the reference, p50 per batch of the
    artifact and of the reference in the same rounds, size on disk."""

    path: str
    runtime: str
    quality: dict
    problem: str | None  # why it misses the floor, or None
    latency_ms: dict[int, float] = field(default_factory=dict)
    reference_ms: dict[int, float] = field(default_factory=dict)
    size_bytes: int = 0

    def speedup(self, batch: int) -> float:
        return self.reference_ms[batch] / self.latency_ms[batch]

    def relative_time(self, batches: tuple[int, ...] | None = None) -> float:
        """Geometric mean over `batches` (default: all) of p50 / the reference's p50."""
        batches = tuple(batches or self.latency_ms)
        return math.exp(sum(math.log(self.latency_ms[b] / self.reference_ms[b]) for b in batches) / len(batches))

    def to_dict(self) -> dict:
        return {"path": self.path, "runtime": self.runtime, "quality": self.quality, "problem": self.problem, "size_bytes": self.size_bytes,
                "latency_ms": {str(b): round(v, 5) for b, v in self.latency_ms.items()},
                "reference_ms": {str(b): round(v, 5) for b, v in self.reference_ms.items()},
                "speedup": {str(b): round(self.speedup(b), 4) for b in self.latency_ms}}


def deployed_runner(path: str | os.PathLike, threads: int | None = None):
    """(runner, runtime): the artifact loaded on the runtime it ships for (its metadata's
    "runtime", or a by-batch dispatch between runtimes; by default the format's own)."""
    runner = load(path, threads=threads)
    return runner, runner.backend


def batch_feed(data, spec, batch: int) -> dict[str, np.ndarray]:
    """`batch` samples from `data` (repeated when it holds fewer), in the model's dtypes; a
    static-batch model gets its own batch size."""
    batch = fixed_batch(spec) or batch
    return {s.name: to_model_layout(np.resize(data.inputs[s.name], (batch, *data.inputs[s.name].shape[1:])), s).astype(s.dtype)
            for s in spec if s.value is None}


def measure_deployed(path: str | os.PathLike, reference_runner, reference_outputs: np.ndarray, data, floor: QualityFloor,
                     batch_sizes: tuple[int, ...], config: LatencyConfig, threads: int | None = None) -> Deployed:
    """Quality of the artifact at `path` on `data` against `reference_outputs` (judged by `floor`),
    and its p50 and the reference's at each batch size, interleaved. Candidates below the floor
    are timed too: the trade-off plot shows them."""
    runner, runtime = deployed_runner(path, threads)
    quality = compare_outputs(reference_outputs, run_batches(runner, data)[0], data.labels)
    measured = Deployed(str(path), runtime, quality, floor.problem(quality), size_bytes=artifact_size(path))
    for batch in batch_sizes:
        feed = batch_feed(data, runner.input_spec, batch)
        reference, candidate = measure_interleaved([(lambda: reference_runner(feed), False), (lambda: runner(feed), False)], config)
        measured.reference_ms[batch], measured.latency_ms[batch] = reference.p50, candidate.p50
    return measured
