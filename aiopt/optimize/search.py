"""The search: ask Optuna for a chain, run it, measure what would ship, tell the result; at the
end choose the best candidate within the budget, verify it once more as written, and report.

Resuming is Optuna's: finished trials stay in the study, a trial interrupted by Ctrl-C or the
time budget is queued again, and `--trials N` counts every finished trial of the study.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiopt.artifacts import artifact_sha256, load_model, output_spec, require_input_spec
from aiopt.errors import AioptError, CheckFailedError, InputError, MissingDependencyError
from aiopt.evaluate import eval_data, run_batches
from aiopt.export.onnx import OnnxExportConfig
from aiopt.measure.deployed import deployed_runner
from aiopt.measure.quality import QualityFloor, choose_metric
from aiopt.optimize.config import OptimizeConfig, describe_duration, validate
from aiopt.optimize.front import Row, best_text, closest, objective_value, pareto, ranked, rows_from
from aiopt.optimize.lm import is_causal_lm_input, optimize_causal_lm
from aiopt.optimize.report import write_json, write_reports
from aiopt.optimize.space import Chain, first_guesses, space_for
from aiopt.optimize.storage import GRACE_BEATS, StorageUnreachable
from aiopt.optimize.study import OutdirLock, open_session, recover, tried
from aiopt.optimize.trial import ChainRunner, Reference, TimeBudgetSpent, TrialResult
from aiopt.optimize.verify import choose_verified, drop_off_front
from aiopt.redact import mask_secrets
from aiopt.steps import run_step

# After this many chains in a row that were already tried, the sampler is stuck on what it
# knows: an untried chain is queued instead (the budget is spent exploring, not stopped early).
MAX_REPEATS = 4
DIRECTIONS = ["maximize", "minimize"]  # quality, objective


@dataclass
class OptimizeResult:
    document: dict
    outdir: Path
    best: str | None  # the chosen artifact's path
    problem: str | None = None  # set when no candidate meets the budget
    notes: list[str] = field(default_factory=list)

    def raise_if_failed(self) -> None:
        if self.problem:
            raise CheckFailedError(self.problem)


def optimize(model: str | os.PathLike, outdir: str | os.PathLike, config: OptimizeConfig = OptimizeConfig(),
             on_trial: Callable[[dict], None] | None = None, say: Callable[[str], None] | None = None,
             on_step: Callable[[str], None] | None = None) -> OptimizeResult:
    """Search chains of steps for the best artifact of `model` within the quality budget; write
    it, the candidates, the reports and reproduce.sh into `outdir`.

    `on_trial(event)` after every trial (event["line"]: one line for a person), `say(message)`
    for the search's own messages, `on_step(message)` for the steps' progress inside a trial."""
    start = time.monotonic()
    validate(config)
    _check_target(config.target)
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"-o {outdir} is a file; pass a folder for the results")
    if not Path(model).exists():
        raise InputError(f"{model} does not exist")
    outdir.mkdir(parents=True, exist_ok=True)
    say = say or (lambda message: None)
    if is_causal_lm_input(model):  # a language model: the study's trials are quantize's causal-LM candidates (aiopt.optimize.lm)
        with OutdirLock(outdir):
            document, best, problem = optimize_causal_lm(Path(model), outdir, config, on_trial or (lambda event: None), say, start)
        return OptimizeResult(document, outdir, best, problem)
    lock = OutdirLock(outdir) if config.storage is None else None
    if lock is not None:
        lock.__enter__()
    try:
        return _Search(Path(model), outdir, config, start, on_trial or (lambda event: None), say, on_step or (lambda message: None),
                       exclusive=lock is not None).run()
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)


def _check_target(target: str) -> None:
    if target != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise MissingDependencyError("--target cuda: no CUDA GPU is visible to PyTorch; use --target cpu, or run on a machine with a GPU")
    raise MissingDependencyError("--target cuda: the CUDA search space (TensorRT and torch-cuda recipes) is not built yet; use --target cpu")


class _Search:
    def __init__(self, model: Path, outdir: Path, config: OptimizeConfig, start: float, on_trial, say, on_step, exclusive: bool):
        self.model, self.outdir, self.config, self.start = model, outdir, config, start
        self.on_trial, self.say, self.on_step, self.exclusive = on_trial, say, on_step, exclusive
        self.deadline = start + config.time_budget if config.time_budget else None
        self.stopped_by_time: str | None = None  # the step the time budget ended a trial at
        self.ran = 0

    # ------------------------------------------------------------ setup
    def run(self) -> OptimizeResult:
        loaded = load_model(self.model)
        self.space = space_for(loaded, self.config)
        floor, reason, data = self._floor(loaded)
        settings = self._settings(floor)

        tries = [self.space.parse(text).params for text in self.config.tries] or [c.params for c in first_guesses(self.space)]
        self.session = open_session(self.config, self.outdir, settings, DIRECTIONS, tries)
        outage = getattr(self.session.storage, "outage", None)
        if outage is not None:  # a shared RDB storage says when it goes away and comes back
            outage.say = self.say
        requeued = recover(self.session, self.exclusive)
        if requeued:
            self.say(f"resuming: trial(s) {', '.join(map(str, requeued))} were interrupted and run again")
        if self.exclusive and not self.session.created:  # a re-run of this folder's search may add chains to try
            for params in tries:
                self.session.study.enqueue_trial(params, skip_if_exists=True)
        self.say(f"search space: {self.space.size()} chains ({len(self.space.quantize)} recipes); budget: {floor.describe()} ({reason}); "
                 f"study {self.config.study_name} in {self.session.storage_label}")
        self.reference = self._reference(loaded, floor, reason, data)
        self.setup_seconds = time.monotonic() - self.start

        self.runner = ChainRunner(self.model, self.outdir, self.space, self.config, self.reference, self.on_step)
        if self.deadline is not None and time.monotonic() >= self.deadline and not self._finished_before():
            self.stopped_by_time = "the first trial started"
            return self._finish(loaded)
        with _SigintSeen() as self.sigint:
            self._loop()
        return self._finish(loaded)

    def _floor(self, loaded):
        try:
            data = eval_data(require_input_spec(loaded), loaded.metadata, self.config.data, seq_len=self.config.seq_len)
        except InputError as exc:
            raise InputError(f"{exc} (optimize measures quality on held-out data: --data)") from None
        outputs = output_spec(loaded)
        metric, reason = choose_metric(loaded.metadata, outputs[0].name if outputs else "", outputs[0].shape if outputs else None,
                                       data.labels is not None, "cosine" if self.config.min_cosine is not None else None)
        if metric == "cosine" and self.config.max_accuracy_drop is not None:
            raise InputError(f"the model's output is judged by cosine similarity ({reason}); pass --min-cosine instead of --max-accuracy-drop")
        return QualityFloor(metric, self.config.accuracy_budget, self.config.min_cosine or 0.99), reason, data

    def _settings(self, floor) -> dict:
        return {"model_sha256": artifact_sha256(self.model), "target": self.config.target, "budget": floor.to_dict(),
                "objective": self.config.objective, "batch_sizes": list(self.config.batch_sizes), "space": self.space.to_dict(),
                "data": self.config.data or "test split", "calibration": self.config.calibration or "training split",
                "seq_len": self.config.seq_len, "seed": self.config.seed}

    def _reference(self, loaded, floor, reason, data):
        """MODEL as FP32 ONNX on ONNX Runtime: the yardstick of quality and of every latency ratio."""
        path = self.outdir / "reference.fp32.onnx"
        if not path.exists():
            if loaded.format == "onnx":
                shutil.copyfile(loaded.path, path)
            else:
                run_step("export", self.model, path, OnnxExportConfig(seq_len=self.config.seq_len), self.on_step)
        runner, _ = deployed_runner(path, self.config.threads)
        return Reference(path, runner, run_batches(runner, data)[0], data, floor, reason)

    # ------------------------------------------------------------ the loop
    def _loop(self) -> None:
        repeats = 0
        while not self._should_stop():
            trial = self.session.ask()
            with self.session.heartbeat(trial):  # from the start: a worker killed at any point leaves a trial that goes stale
                if self.config.trials is not None and self.session.spare(trial, self.config.trials):
                    self.say(f"trial {trial.number} not needed: --trials {self.config.trials} reached by other workers' trials")
                    continue
                chain = self.space.suggest(trial)
                twin = self.session.finished_like(chain.params) or self.session.running_like(chain.params, trial.number)
                if twin is not None and twin.number != trial.number:
                    self._copy(trial, twin)
                    repeats += 1
                    if repeats >= MAX_REPEATS:
                        if not self._queue_untried():
                            self.say("every chain of the space has been tried: the space is explored")
                            return
                        repeats = 0
                    continue
                repeats = 0
                if not self._run_trial(trial, chain):
                    return

    def _queue_untried(self) -> bool:
        """Queue one chain no trial has run or is running (drawn with the search's seed); False
        when there is none left."""
        import random

        taken = self._chains_taken(("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"))
        untried = [chain for chain in self.space.chains() if _chain_key(chain.params) not in taken]
        if not untried:
            return False
        chain = random.Random(self.config.seed + len(taken)).choice(untried)
        self.say(f"the sampler asked {MAX_REPEATS} times in a row for chains tried before; next: {chain.label()} "
                 f"(one of {len(untried)} not tried yet)")
        self.session.study.enqueue_trial(chain.params)
        return True

    def _finished_before(self) -> bool:
        """Whether the study already holds a finished trial (a resumed or shared search)."""
        return bool(self.session.trials(("COMPLETE", "PRUNED")))

    def _should_stop(self) -> bool:
        """Whether this worker is done. With workers that beat (a shared RDB storage), one that
        has reached --trials while others still run trials waits for them: a trial whose worker
        dies is then failed and queued again, and run here; and every worker reports the same
        trials."""
        waiting_said, unqueued_since = False, None
        while True:
            self._reap()
            if self.deadline is not None and time.monotonic() >= self.deadline:
                self.stopped_by_time = self.stopped_by_time or "the first trial started"
                return True
            if len(self._chains_taken(("COMPLETE", "PRUNED", "FAIL"))) >= self.space.size():
                return True
            if self.config.trials is None or self.session.counted() < self.config.trials:
                return False
            if self.session.retry_queued():  # a lost trial queued again: the next ask takes it (Optuna's queue first)
                return False
            running = self.session.trials(("RUNNING",))
            interval = self.session.beating
            if not interval:
                return True
            if not running:
                # a lost trial failed by another worker's reap, its retry not queued yet: the next
                # moment, unless that worker died in between (then queued here after a grace period)
                unqueued = self.session.unqueued_retries()
                if not unqueued:
                    return True
                unqueued_since = unqueued_since or time.monotonic()
                if time.monotonic() - unqueued_since > GRACE_BEATS * interval:
                    for trial in unqueued:
                        self.say(f"trial {trial.number} was failed as lost but its retry was never queued: queuing it here")
                        self.session.queue_retry(trial)
                    unqueued_since = None
                    continue
                running = unqueued
            if not waiting_said:
                self.say(f"--trials {self.config.trials} reached; waiting for trial(s) {', '.join(str(t.number) for t in running)} "
                         "on other workers (one whose worker dies is run again here)")
                waiting_said = True
            time.sleep(min(interval, 5))

    def _reap(self) -> None:
        """Trials whose worker stopped beating are failed and queued again (Optuna's stale-trial
        callback); say so once per trial."""
        for trial in self.session.reap():
            attrs = trial.user_attrs
            self.say(f"trial {trial.number} ({attrs.get('chain', 'chain not chosen yet')}, on {attrs.get('worker', 'a worker')}) is lost: "
                     f"its worker stopped beating for {_grace_text(self.session.beating)}; it is queued to run again")

    def _chains_taken(self, states: tuple[str, ...]) -> set[tuple]:
        """The chains of the study's trials in these states: a trial interrupted, or lost with its
        worker, does not take its chain (it is run again)."""
        return {_chain_key(t.params) for t in self.session.trials(states) if t.state.name in ("RUNNING", "WAITING") or tried(t)}

    def _run_trial(self, trial, chain) -> bool:
        """Run one trial and tell Optuna; False when the time budget ended it."""
        import optuna


        started = time.monotonic()
        trial.set_user_attr("chain", chain.label())
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        result = TrialResult(chain, self.runner.folder(trial.number))
        state, values = optuna.trial.TrialState.FAIL, None
        verdict: dict[str, str] = {}  # written with the record below, where a trial taken as lost is handled
        try:
            self.runner.run(chain, trial.number, self.deadline, result)
        except optuna.TrialPruned as exc:
            state = optuna.trial.TrialState.PRUNED
            verdict["pruned"] = str(exc)
        except TimeBudgetSpent as exc:
            verdict["interrupted"] = "time budget"
            self.stopped_by_time = exc.step
        except KeyboardInterrupt:
            self._interrupted(trial, result, started)
            raise
        except Exception as exc:  # noqa: BLE001 -- a chain a library cannot build must not end the search
            if self.sigint.hit:  # Ctrl-C that a library turned into its own error
                self._interrupted(trial, result, started)
                raise KeyboardInterrupt from exc
            verdict["error"] = mask_secrets(str(exc) if isinstance(exc, AioptError) else f"unexpected {type(exc).__name__}: {exc}")[:500]
        else:
            state, values = optuna.trial.TrialState.COMPLETE, self._values(result.measured)
            verdict["ships_as"] = f"{result.steps[-1].record.get('chosen')} on {result.measured.runtime}"
        try:
            for key, value in verdict.items():
                trial.set_user_attr(key, value)
            self._record(trial, result, started)
            frozen = self.session.study.tell(trial, values=values, state=None if values else state)
        except optuna.exceptions.UpdateFinishedTrialError:
            # another worker took this one for dead (no heartbeat for the grace period: an outage,
            # a machine stalled) and queued it again: the retry measures it
            self.say(f"trial {trial.number} ({chain.label()}) was taken as lost by another worker while it ran (no heartbeat for "
                     f"{_grace_text(self.session.beating)}); its retry measures it again")
            return self.stopped_by_time is None
        except StorageUnreachable:
            self._leave_failed(trial, "its worker lost the storage")
            raise
        self.ran += 1
        self._report_trial(frozen)
        return self.stopped_by_time is None

    def _leave_failed(self, trial, why: str) -> None:
        """The storage has been unreachable too long: mark the trial failed if the server
        answers at once (a re-run then runs it again), else leave it to go stale."""
        import optuna

        try:
            trial.set_user_attr("interrupted", why)
            self.session.study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        except Exception:  # noqa: BLE001 -- still unreachable: its heartbeat stops, the others queue it again
            pass

    def _interrupted(self, trial, result, started: float) -> None:
        import optuna

        trial.set_user_attr("interrupted", "Ctrl-C")
        self._record(trial, result, started)
        self.session.study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def _values(self, measured) -> list[float]:
        return [self.reference.floor.value(measured.quality), objective_value(measured, self.config.objective, self.config.batch_sizes)]

    def _record(self, trial, result, started: float) -> None:
        """What the report needs, in the study itself: workers on other machines write it too."""
        result.folder.mkdir(parents=True, exist_ok=True)
        trial.set_user_attr("steps", [s.to_dict() for s in result.steps])
        trial.set_user_attr("seconds", round(time.monotonic() - started, 2))
        if result.measured is not None:
            trial.set_user_attr("measured", result.measured.to_dict())
            trial.set_constraint("quality_budget", _shortfall(self.reference.floor, result.measured))

        write_json(result.folder / "trial.json", {"trial": trial.number, **trial.user_attrs, "params": trial.params})

    def _copy(self, trial, twin) -> None:
        """A chain tried before: its result stands for this trial too, without running it again.
        The repeat keeps the verdict (values, constraint) and points at the original for the rest:
        copying every measurement made a study that explores a whole space ten times larger.
        A chain another worker is running now: this trial ends as a repeat of that one (failed,
        so it counts for nothing); if that worker dies, its trial is queued again."""
        import optuna

        if twin.state.name == "RUNNING":
            trial.set_user_attr("chain", twin.user_attrs.get("chain", ""))
            trial.set_user_attr("duplicate_of", twin.number)
            self._report_trial(self.session.study.tell(trial, state=optuna.trial.TrialState.FAIL))
            return
        for key, value in twin.user_attrs.items():
            if key not in ("retry_of", "measured", "steps"):
                trial.set_user_attr(key, value)
        trial.set_user_attr("duplicate_of", twin.number)
        for key, value in twin.constraints.items():
            trial.set_constraint(key, value)
        frozen = self.session.study.tell(trial, values=twin.values if twin.values else None, state=None if twin.values else twin.state)
        self._report_trial(frozen)

    def _report_trial(self, frozen) -> None:
        rows = rows_from(self.session.trials())
        row = next(r for r in rows if r.number == frozen.number)
        best = (ranked(rows) or [None])[0]
        self.on_trial({"trial": row.number, "chain": row.chain, "state": row.state, "line": _trial_line(row, self, best)})

    # ------------------------------------------------------------ the end
    def _finish(self, loaded) -> OptimizeResult:
        rows = rows_from(self.session.trials())
        finished = [r for r in rows if r.state in ("COMPLETE", "PRUNED")]
        if not finished and self.stopped_by_time:
            raise InputError(f"--time-budget {describe_duration(self.config.time_budget)} is too small for one trial: none finished "
                             f"(setup alone, the FP32 reference's export and measurement, took {describe_duration(self.setup_seconds)}; "
                             f"the budget ran out before {self.stopped_by_time}); give more time, e.g. --time-budget 20m")
        front = pareto(rows)
        chosen, verified = choose_verified(ranked(rows), self.model, self.outdir, self.reference, self.config, self._rebuild, self.say)
        if self.config.keep == "pareto":
            drop_off_front(rows, {r.number for r in front} | ({chosen.number} if chosen else set()), self.runner.folder)
        problem = None
        if chosen is None:
            near = closest(rows)
            listed = "; ".join(f"#{r.number} {r.chain}: {_clip(r.measured.get('problem') or r.reason)}" for r in near) or "no trial finished"
            problem = (f"no candidate meets the budget ({self.reference.floor.describe()}) in {len(finished)} finished trial(s); "
                       f"closest: {listed}. Relax the budget or run more trials")
        document = write_reports(self, rows, front, chosen, verified, problem, loaded)
        return OptimizeResult(document, self.outdir, verified["path"] if verified else None, problem)

    def _rebuild(self, row: Row) -> Path:
        """The artifact of a trial another worker ran, made here by running its chain again."""
        self.say(f"trial {row.number} ran on {row.worker}: rebuilding its chain here to verify it")
        result = self.runner.run(Chain(**row.params), row.number, None)
        return Path(result.artifact)


class _SigintSeen:
    """Notes a Ctrl-C while it passes on to the handler before it (a library may turn the
    KeyboardInterrupt into an error of its own: that trial was interrupted, not failed)."""

    hit = False

    def __enter__(self) -> _SigintSeen:
        self.previous = None
        try:
            self.previous = signal.getsignal(signal.SIGINT)
            if self.previous not in (signal.SIG_IGN, None):
                signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: signals are not ours to handle
            self.previous = None
        return self

    def _handle(self, signum, frame) -> None:
        self.hit = True
        (self.previous if callable(self.previous) else signal.default_int_handler)(signum, frame)

    def __exit__(self, *exc) -> None:
        if self.previous not in (signal.SIG_IGN, None):
            signal.signal(signal.SIGINT, self.previous)


def _chain_key(params: dict) -> tuple:
    return tuple(sorted(params.items()))


def _grace_text(interval: int | None) -> str:
    """How long a worker may be silent before its trial is taken as lost."""
    return f"{GRACE_BEATS * (interval or 0)} s"


def _clip(text: str | None, limit: int = 110) -> str:
    text = text or ""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _shortfall(floor, measured) -> float:
    """How far a candidate is below the budget (0 when within it): Optuna's constraint value."""
    if measured.problem is None:
        return 0.0
    quality = measured.quality
    if floor.metric == "accuracy":
        return max(1e-6, quality["accuracy_drop"] - floor.max_accuracy_drop)
    needed = floor.min_cosine if floor.metric == "cosine" else 1 - floor.max_accuracy_drop
    value = floor.value(quality)
    return max(1e-6, needed - value) if value is not None and value == value else 1.0


def _trial_line(row: Row, search: _Search, best: Row | None) -> str:
    config = search.config
    elapsed = describe_duration(time.monotonic() - search.start)
    head = f"trial {row.number:>3} {row.chain}"
    if row.duplicate_of is not None:
        body = (f"running as trial {row.duplicate_of} on another worker" if row.state == "FAIL"
                else f"tried before as trial {row.duplicate_of}, its result stands")
    elif row.interrupted:
        body = f"stopped ({row.interrupted}); a re-run runs it again"
    elif row.state == "COMPLETE":
        floor = search.reference.floor
        quality = row.measured.get("quality") or {}
        figure = (f"acc {quality['accuracy']:.4f} ({-quality['accuracy_drop'] * 100:+.2f} pt)" if floor.metric == "accuracy"
                  else f"{floor.metric} {row.quality:.4f}")
        timing = " ".join(f"b{b} {row.measured['latency_ms'][str(b)]:.3f} ms ({row.speedup(b):.2f}x)" for b in config.batch_sizes)
        verdict = "" if row.meets else f" [{row.measured.get('problem')}]"
        body = f"{figure}{verdict}, {timing}"
    else:
        body = f"{row.state.lower()}: {row.reason or ''}"
    return f"{head}: {body} | {elapsed} | best {best_text(best, config.objective, config.batch_sizes)}"
