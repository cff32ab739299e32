"""One artifact, the faster runtime per batch size.

On CPUs ONNX Runtime often wins at batch 1 (less per-call overhead) and OpenVINO at large
batches (better-blocked kernels). When `aiopt quantize` measured the same file on both, the
artifact records which runtime serves which batch sizes (`metadata["dispatch"]`), and this
Runner holds one session per runtime and sends each call to the one measured faster for it.
"""
from __future__ import annotations

import numpy as np

from aiopt.runtime.base import Runner


def dispatch_rule(latency_by_runtime: dict[str, dict[int, float]]) -> list[dict]:
    """[{"max_batch": N, "runtime": R}, ..., {"max_batch": None, "runtime": R}] from p50 per
    runtime per measured batch size. Between two measured sizes whose winners differ, the
    switch is at their geometric mean (the measurements say nothing finer)."""
    batches = sorted(set.intersection(*(set(v) for v in latency_by_runtime.values())))
    winners = [(b, min(latency_by_runtime, key=lambda r: latency_by_runtime[r][b])) for b in batches]
    rule: list[dict] = []
    for (batch, runtime), (next_batch, next_runtime) in zip(winners, winners[1:]):
        if runtime != next_runtime:
            rule.append({"max_batch": int((batch * next_batch) ** 0.5), "runtime": runtime})
    rule.append({"max_batch": None, "runtime": winners[-1][1]})
    return rule


class BatchDispatchRunner(Runner):
    backend = "dispatch"

    def __init__(self, runners: dict[str, Runner], rule: list[dict], source: str = ""):
        first = next(iter(runners.values()))
        super().__init__(first.input_spec, first.output_names, first.device, source)
        self.runners, self.rule = runners, rule
        self.backend = "+".join(entry["runtime"] for entry in rule)
        self._name = self.input_spec[0].name

    def runtime_for(self, batch: int) -> str:
        for entry in self.rule:
            if entry["max_batch"] is None or batch <= entry["max_batch"]:
                return entry["runtime"]
        return self.rule[-1]["runtime"]

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # inputs were checked once, by this Runner's __call__: go straight to the backend
        return self.runners[self.runtime_for(len(feed[self._name]))]._infer(feed)
