"""One artifact, the faster way to serve it per batch size.

On CPUs ONNX Runtime often wins at batch 1 (less per-call overhead) and OpenVINO at large
batches (better-blocked kernels); dynamic INT8 wins small batches where static INT8 or BF16
wins large ones. When `aiopt quantize` measured that the fastest way differs by batch size,
the artifact records routes (`metadata["dispatch"]`): up to which batch size each runtime
serves, from the main file or from a companion file beside it. This Runner holds one Runner
per route and sends each call to the one measured faster for its batch size.
"""
from __future__ import annotations

from typing import TypeVar

import numpy as np

from aiopt.runtime.base import Runner

T = TypeVar("T")


def dispatch_rule(latency_by_route: dict[str, dict[int, float]], key: str = "runtime", tie: float = 0.0,
                  group: dict[str, str] | None = None) -> list[dict]:
    """[{"max_batch": N, key: R}, ..., {"max_batch": None, key: R}] from p50 per route per
    measured batch size. Between two measured sizes whose winners differ, the switch is at their
    geometric mean (the measurements say nothing finer).

    With `tie` and `group` (route -> the file it runs): at a batch size where a route within
    `tie` of the fastest runs a file that another size's winner runs, it wins there instead: a
    difference inside the run-to-run noise must not add a second file and runtime to ship."""
    batches = sorted(set.intersection(*(set(v) for v in latency_by_route.values())))

    def fastest(batch: int, routes) -> str:
        return min(routes, key=lambda r: latency_by_route[r][batch])

    winners = {b: fastest(b, latency_by_route) for b in batches}
    if tie and group:
        for batch in batches:
            best = latency_by_route[winners[batch]][batch]
            files_elsewhere = {group[winners[b]] for b in batches if b != batch}
            kin = [r for r in latency_by_route if group[r] in files_elsewhere and latency_by_route[r][batch] <= best * (1 + tie)]
            if kin and group[winners[batch]] not in files_elsewhere:
                winners[batch] = fastest(batch, kin)
    ordered = [(b, winners[b]) for b in batches]
    rule: list[dict] = []
    for (batch, route), (next_batch, next_route) in zip(ordered, ordered[1:]):
        if route != next_route:
            rule.append({"max_batch": int((batch * next_batch) ** 0.5), key: route})
    rule.append({"max_batch": None, key: ordered[-1][1]})
    return rule


def route_for(routes: list[tuple[int | None, T]], batch: int) -> T:
    """What serves `batch` of (largest batch, what serves it) pairs, smallest first: the first
    whose limit holds it (None: any), else the last. A plain loop: every dispatched call runs it."""
    for max_batch, served_by in routes:
        if max_batch is None or batch <= max_batch:
            return served_by
    return routes[-1][1]


class BatchDispatchRunner(Runner):
    backend = "dispatch"

    def __init__(self, routes: list[tuple[int | None, Runner]], source: str = ""):
        """`routes`: (largest batch it serves, or None for the rest; its Runner), smallest first."""
        first = routes[0][1]
        super().__init__(first.input_spec, first.output_names, first.device, source)
        self.routes = routes
        self.backend = "+".join(runner.backend for _, runner in routes)
        batched = next((spec for spec in self.input_spec if spec.batch_axis is not None), self.input_spec[0])
        self._name, self._axis = batched.name, batched.batch_axis or 0

    def runner_for(self, batch: int) -> Runner:
        return route_for(self.routes, batch)

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # inputs were checked once, by this Runner's __call__: go straight to the backend
        runner = self.runner_for(feed[self._name].shape[self._axis])
        return runner._infer({**feed, **runner.fixed_inputs} if runner.fixed_inputs else feed)

    def describe(self) -> dict:
        return {**super().describe(), "routes": [{"max_batch": m, "backend": r.backend, "source": r.source} for m, r in self.routes]}
