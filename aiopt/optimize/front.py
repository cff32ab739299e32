"""Reading a study back: one row per trial, the Pareto front of quality against the objective,
and the choice (the best objective among candidates within the budget)."""
from __future__ import annotations

from dataclasses import dataclass, field
from aiopt.bench.plots import pareto_front
from aiopt.optimize.study import is_lost

OBJECTIVE_LABELS = {"latency": "time vs FP32 (geo-mean over batches)", "throughput": "time vs FP32 at the largest batch",
                    "size": "bytes on disk"}


@dataclass
class Row:
    number: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    chain: str
    params: dict
    quality: float | None = None  # the budget's figure (accuracy, agreement or mean cosine), higher is better
    objective: float | None = None  # lower is better
    measured: dict = field(default_factory=dict)  # measure.deployed.Deployed.to_dict()
    steps: list = field(default_factory=list)  # steps.StepOutcome.to_dict()
    reason: str | None = None  # why pruned or failed
    seconds: float | None = None
    worker: str | None = None
    duplicate_of: int | None = None
    interrupted: str | None = None  # "Ctrl-C" or "time budget": run again by the next run
    ships_as: str | None = None  # what the quantize step chose for the recipe (a twin on another runtime, ...) and where it runs
    lost: bool = False  # failed because its worker stopped beating (killed, cut off): run again as `retried_as`
    retried_as: int | None = None

    @property
    def meets(self) -> bool:
        return self.state == "COMPLETE" and self.measured.get("problem") is None and bool(self.measured)

    @property
    def artifact(self) -> str | None:
        return self.measured.get("path")

    def speedup(self, batch: int) -> float | None:
        return (self.measured.get("speedup") or {}).get(str(batch))

    def to_dict(self) -> dict:
        return {"trial": self.number, "state": self.state, "chain": self.chain, "params": self.params, "quality": self.quality,
                "objective": self.objective, "meets_budget": self.meets, "measured": self.measured, "steps": self.steps,
                "reason": self.reason, "seconds": self.seconds, "worker": self.worker, "duplicate_of": self.duplicate_of,
                "interrupted": self.interrupted, "ships_as": self.ships_as, "lost": self.lost, "retried_as": self.retried_as}


def rows_from(trials) -> list[Row]:
    """Rows from Optuna's FrozenTrials (their user attributes hold what aiopt recorded)."""
    # Optuna's stale-trial callback records on each retry the trials it retries (retry_history)
    retried_as = {t.system_attrs["retry_history"][-1]: t.number for t in trials if t.system_attrs.get("retry_history")}
    rows = []
    for trial in sorted(trials, key=lambda t: t.number):
        attrs = trial.user_attrs
        if "spare" in attrs:  # one trial too many, failed before it chose a chain (Session.spare): stands for nothing
            continue
        values = trial.values or [None, None]
        lost = is_lost(trial)
        reason = attrs.get("pruned") or attrs.get("error")
        if lost:
            retry = retried_as.get(trial.number)
            reason = "lost: its worker stopped beating (killed, or cut off from the storage); " + (
                f"run again as trial {retry}" if retry is not None else "not queued again (retried too often)")
        rows.append(Row(trial.number, trial.state.name, attrs.get("chain", ""), dict(trial.params), values[0], values[1],
                        attrs.get("measured") or {}, attrs.get("steps") or [], reason,
                        attrs.get("seconds"), attrs.get("worker"), attrs.get("duplicate_of"), attrs.get("interrupted"),
                        attrs.get("ships_as"), lost, retried_as.get(trial.number)))
    return rows


def pareto(rows: list[Row]) -> list[Row]:
    """Measured candidates no other beats on both quality and the objective, by objective."""
    measured = [r for r in rows if r.state == "COMPLETE" and r.duplicate_of is None and r.objective is not None]
    return [row for _, _, row in pareto_front([(r.objective, r.quality, r) for r in measured])]


def ranked(rows: list[Row]) -> list[Row]:
    """Candidates within the budget, best objective first (smaller artifact on a tie)."""
    within = [r for r in rows if r.meets and r.duplicate_of is None]
    return sorted(within, key=lambda r: (r.objective, r.measured.get("size_bytes", 0), r.number))


def closest(rows: list[Row], count: int = 3) -> list[Row]:
    """When nothing meets the budget: the measured candidates of highest quality, then the
    pruned ones (their quality as the step that broke the budget measured it)."""
    measured = sorted((r for r in rows if r.state == "COMPLETE" and r.duplicate_of is None), key=lambda r: -(r.quality or 0))
    pruned = [r for r in rows if r.state == "PRUNED" and r.duplicate_of is None]
    return (measured + pruned)[:count]


def best_text(row: Row | None, objective: str, batch_sizes) -> str:
    if row is None:
        return "none within the budget yet"
    if objective == "size":
        return f"#{row.number} {row.measured.get('size_bytes', 0) / 1024:.1f} KiB"
    return f"#{row.number} " + " ".join(f"{row.speedup(b):.2f}x@b{b}" for b in batch_sizes if row.speedup(b))


def objective_value(measured, objective: str, batch_sizes) -> float:
    """What the search minimises, from a measure.deployed.Deployed. Times are ratios to the FP32
    reference timed in the same rounds, so trials measured minutes apart stay comparable."""
    if objective == "size":
        return float(measured.size_bytes)
    if objective == "throughput":
        return measured.relative_time((max(batch_sizes),))
    return measured.relative_time(tuple(batch_sizes))
