"""The end of a search: the best candidate within the budget is copied to OUTDIR and measured again
as written there (the artifact that would ship, on the runtime its metadata names), the next one
tried when it misses; and --keep pareto's clean-up of the artifacts off the front."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from aiopt.artifacts import copy_artifact
from aiopt.measure.deployed import measure_deployed
from aiopt.optimize.config import OptimizeConfig
from aiopt.optimize.front import Row


def choose_verified(candidates: list[Row], model: Path, outdir: Path, reference, config: OptimizeConfig,
                    rebuild: Callable[[Row], Path], say: Callable[[str], None]) -> tuple[Row | None, dict | None]:
    """The first of `candidates` (best first) that still meets the budget when measured again as
    OUTDIR/MODEL.optimized.EXT, with that measurement; `rebuild` makes a trial's artifact that
    another worker ran. (None, None) when none does."""
    for row in candidates:
        source = Path(row.artifact or "")
        if not source.exists():
            source = rebuild(row)
        target = outdir / f"{_stem(model)}.optimized{source.suffix}"
        copy_artifact(source, target, force=True)  # OUTDIR is this search's own: an earlier run's choice is replaced
        again = measure_deployed(target, reference.runner, reference.outputs, reference.data, reference.floor,
                                 config.batch_sizes, config.latency, config.threads)
        if again.problem is None:
            return row, {**again.to_dict(), "trial": row.number}
        say(f"trial {row.number} misses the budget when measured again ({again.problem}); trying the next")
        target.unlink()
    return None, None


def drop_off_front(rows: list[Row], keep: set[int], folder_of: Callable[[int], Path]) -> None:
    """--keep pareto: artifacts of trials off the front go (their trial.json stays)."""
    for row in rows:
        folder = folder_of(row.number)
        if row.number in keep or row.state not in ("COMPLETE", "PRUNED", "FAIL") or not folder.is_dir():
            continue  # a trial still running (another worker sharing this folder) keeps its files
        for path in folder.iterdir():
            if path.name != "trial.json":
                path.unlink()


def _stem(model: Path) -> str:
    name = model.name
    return name[: -len(model.suffix)] if model.suffix and model.is_file() else name
