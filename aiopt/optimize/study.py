"""Where the search lives: an Optuna study in a journal file in OUTDIR (the default, one search
per folder, guarded by a lock file) or in any Optuna storage URL shared by several machines.

The settings a study's results depend on (model, target, budget, objective, batch sizes, search
space) are stored as a study user attribute by whoever creates it; a run with other settings is
refused, since its trials would not be comparable.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiopt.errors import InputError, MissingDependencyError
from aiopt.optimize import storage as rdb
from aiopt.optimize.journal_repair import repair_journal
from aiopt.optimize.storage import Heartbeat, beating, describe_url, no_optuna_warnings
from aiopt.redact import mask_known

JOURNAL = "study.journal"
LOCK = ".optimize.lock"
SETTINGS_ATTR = "aiopt_settings"
FINISHED = ("COMPLETE", "PRUNED")


class OutdirLock:
    """One `aiopt optimize` per folder on the default storage: a lock file holding the pid,
    taken over when that process is gone (a run killed with SIGKILL leaves it behind)."""

    def __init__(self, outdir: Path):
        self.path = outdir / LOCK

    def __enter__(self) -> OutdirLock:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and _alive(owner):
                    raise InputError(f"another aiopt optimize (pid {owner}) is writing {self.path.parent}; wait for it, "
                                     "choose another -o, or share one study with --storage URL; if no aiopt optimize is running "
                                     f"(process {owner} is another program), remove the lock file {self.path}") from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            return self
        raise InputError(f"could not take the lock {self.path}; remove it if no aiopt optimize is running")

    def __exit__(self, *exc) -> None:
        if self._owner() == os.getpid():
            self.path.unlink(missing_ok=True)

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text().strip() or 0) or None
        except (OSError, ValueError):
            return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def describe_storage(url: str | None, outdir: Path) -> str:
    """The storage as shown to people: passwords hidden."""
    if url is None:
        return str(outdir / JOURNAL)
    if "://" not in url:
        return url

    return describe_url(url)


def open_storage(url: str | None, outdir: Path, timeout: float | None = None, heartbeat: int | None = None):
    """The Optuna storage: a journal file (default: OUTDIR/study.journal, or a path given as
    --storage), or an RDB URL (sqlite:///..., postgresql://...; aiopt.optimize.storage).
    Unreachable -> InputError; no driver -> MissingDependencyError."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage


    journal = outdir / JOURNAL if url is None else url if "://" not in url else None
    if journal is not None:
        repair_journal(journal)  # a write cut short (journal_repair.py)
    try:
        if journal is not None:
            return JournalStorage(JournalFileBackend(str(journal)))
        return rdb.open_rdb(url, timeout or rdb.DEFAULT_STORAGE_TIMEOUT, heartbeat or rdb.DEFAULT_HEARTBEAT)
    except MissingDependencyError:
        raise
    except Exception as exc:  # noqa: BLE001 -- drivers raise their own types; all mean "cannot use this storage"
        label = describe_storage(url, outdir)
        hint = rdb.missing_driver(exc)
        if hint is not None:
            raise MissingDependencyError(f"--storage {label}: its database driver is not installed; {hint}") from None
        first = mask_known((str(exc).strip().splitlines() or [type(exc).__name__])[0][:200], [rdb.password_of(url or "")])
        raise InputError(f"cannot open --storage {label}: {first}; check the URL (user, password, database), that the server "
                         "runs and is reachable from here") from None


@dataclass
class Session:
    study: object  # optuna.Study
    storage: object  # what open_storage made (the study wraps it in a cache)
    storage_label: str
    created: bool
    notes: list[str] = field(default_factory=list)
    known_lost: set[int] = field(default_factory=set)

    def trials(self, states: tuple[str, ...] | None = None) -> list:
        import optuna

        wanted = None if states is None else tuple(getattr(optuna.trial.TrialState, s) for s in states)
        return self.study.get_trials(deepcopy=False, states=wanted)

    def ask(self):
        """The next trial (a queued one first); Optuna warns that heartbeats are meant for
        Study.optimize, but ask/tell with our own beat is what lets a trial be interrupted cleanly."""
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            return self.study.ask()

    def counted(self, below: int | None = None) -> int:
        """Trials that count towards --trials (those numbered below `below` when given): measured
        ones (complete or pruned), those running now (here or on another worker), so that workers
        together stop at N, and a lost trial's chain until its retry has run: the retry queued
        (WAITING), or not queued yet. Optuna's reap fails the lost trial first and queues its
        retry after, in separate calls; a worker that looked in between saw one trial fewer,
        asked the sampler for a new chain, and the retry, queued a moment later, was never run
        (the study already counted N). Failed trials do not count otherwise (an error, an
        interruption, a spare), nor repeats of a chain tried before."""
        trials = self.trials()
        unqueued = {t.number for t in self._unqueued_retries(trials)}
        return sum(1 for t in trials if (below is None or t.number < below) and (_counts(t) or t.number in unqueued))

    def unqueued_retries(self) -> list:
        """Lost trials whose retry is not queued yet: the worker that failed one queues it next."""
        return self._unqueued_retries(self.trials())

    def _unqueued_retries(self, trials: list) -> list:
        if not self.beating:
            return []
        retried = {number for t in trials for number in t.system_attrs.get("retry_history", ())}
        return [t for t in trials if is_lost(t) and t.number not in retried and will_be_retried(t)]

    def queue_retry(self, trial) -> None:
        """Queue a lost trial's retry as Optuna's stale-trial callback does (for a trial whose
        reaper died between failing it and queuing it)."""
        self.storage.get_heartbeat_stale_trial_callback()(self.study, self.storage.get_trial(trial._trial_id))

    def retry_queued(self) -> bool:
        """Whether a lost trial's retry waits in the queue (the next ask takes it)."""
        return any(is_retry(t) for t in self.trials(("WAITING",)))

    def spare(self, trial, trials: int) -> bool:
        """Whether `trial`, new from the sampler, is one too many: the trials numbered below it
        already make `trials` (two workers asked at once, or this one asked for a queued retry
        that another took first). A spare is failed at once, marked so: it counts for nothing,
        stands for no chain and is left out of the report. A queued trial (a --try chain, a
        retry) is never spare: its chain is run."""
        import optuna

        if is_queued(self.storage.get_trial_system_attrs(trial._trial_id)) or self.counted(below=trial.number) < trials:
            return False
        trial.set_user_attr("spare", f"--trials {trials} already reached by trials numbered below it")
        self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return True

    def finished_like(self, params: dict):
        """A trial that tried these params, if any (see `tried`)."""
        return next((trial for trial in self.trials((*FINISHED, "FAIL")) if trial.params == params and tried(trial)), None)

    def running_like(self, params: dict, other_than: int):
        """A trial running these params now (on another worker), if any."""
        return next((t for t in self.trials(("RUNNING",)) if t.params == params and t.number != other_than), None)

    @property
    def beating(self) -> int | None:
        """The heartbeat interval when workers beat (a shared RDB storage), else None."""
        return beating(self.storage)

    def heartbeat(self, trial):
        """Context that beats while `trial` runs, so that a worker that dies is noticed by the
        others (its trial failed and queued again); a no-op without heartbeats."""
        return Heartbeat(self.storage, trial._trial_id)

    def reap(self) -> list:
        """Fail the trials whose worker stopped beating (Optuna's fail_stale_trials, whose
        callback queues each again); the trials newly seen lost (by this call or another
        worker's). Optuna does this only in Study.optimize: a worker of ours does it before
        every trial and while it waits for others."""
        interval = self.beating
        outage = getattr(self.storage, "outage", None)
        if not interval or (outage is not None and outage.recent(interval + 10)):
            return []  # after an outage every worker missed its beats: wait until they beat again
        import optuna

        with no_optuna_warnings():
            optuna.storages.fail_stale_trials(self.study)
        lost = [t for t in self.trials(("FAIL",)) if is_lost(t) and t.number not in self.known_lost]
        self.known_lost.update(t.number for t in lost)
        return lost


def _counts(trial) -> bool:
    """Whether a trial counts towards --trials by its own state (see Session.counted)."""
    state, attrs = trial.state.name, trial.user_attrs
    if state in (*FINISHED, "RUNNING"):
        return not attrs.get("interrupted") and "duplicate_of" not in attrs
    return state == "WAITING" and is_retry(trial)


def tried(trial) -> bool:
    """Whether a trial's chain has been tried: measured (complete, pruned) or failed by an
    error of its own. A trial interrupted (Ctrl-C, time budget) or lost with its worker was not:
    its chain is run again, never answered from it."""
    state = trial.state.name
    return state in FINISHED or (state == "FAIL" and "error" in trial.user_attrs and not trial.user_attrs.get("interrupted"))


def is_lost(trial) -> bool:
    """A trial failed because its worker stopped beating (killed, or cut off from the storage):
    failed with nothing of aiopt's saying why, and never told its end by aiopt (which records
    its seconds first): Optuna fails a trial told a NaN value itself, and that one is not lost,
    nor queued again by a waiting worker (Session.unqueued_retries)."""
    attrs = trial.user_attrs
    keys = ("error", "interrupted", "pruned", "duplicate_of", "spare", "seconds")
    return trial.state.name == "FAIL" and not any(key in attrs for key in keys)


def is_retry(trial) -> bool:
    """A trial Optuna's stale-trial callback queued to run a lost trial's chain again."""
    return "failed_trial" in trial.system_attrs


def will_be_retried(trial) -> bool:
    """Whether Optuna's stale-trial callback queues a lost trial again (it stops after
    rdb.MAX_RETRY retries of one chain; a retry carries the numbers it retries)."""
    return len(trial.system_attrs.get("retry_history", ())) < rdb.MAX_RETRY


def is_queued(system_attrs: dict) -> bool:
    """Whether a trial came from the queue: a chain enqueued (--try, an untried chain, a resumed
    one: Optuna's fixed_params) or a lost trial's retry."""
    return "fixed_params" in system_attrs or "failed_trial" in system_attrs


def sampler_for(config, shared: bool, history: int):
    """TPE (default) or NSGA-II; both read the quality budget from each trial's constraint
    (Trial.set_constraint). The seed moves on with the study's `history` (a resumed run would
    otherwise ask for the chains the first run began with), and workers sharing a study get
    different seeds, or their first random trials would all be the same."""
    import optuna

    seed = config.seed + history + (os.getpid() if shared else 0)
    if config.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=6)


def open_session(config, outdir: Path, settings: dict, directions: list[str], first: list[dict] = ()) -> Session:
    """Create the study or load it; refuse one made with other settings. The creator queues the
    `first` chains (params) before it writes the settings, which workers wait for: every worker
    then sees them queued."""
    import optuna

    storage = open_storage(config.storage, outdir, config.storage_timeout, config.heartbeat)
    label = describe_storage(config.storage, outdir)
    silence_optuna()
    try:
        study = optuna.create_study(storage=storage, study_name=config.study_name, directions=directions)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=config.study_name, storage=storage)
        created = False
    study.sampler = sampler_for(config, config.storage is not None, len(study.trials))
    if created:
        for params in first:
            study.enqueue_trial(params, skip_if_exists=True)
        study.set_user_attr(SETTINGS_ATTR, settings)
    else:
        _check_settings(study, settings, config.study_name, label)
    return Session(study, storage, label, created)


def _check_settings(study, settings: dict, name: str, label: str) -> None:
    stored = _wait_for_settings(study)
    if stored is None:  # a study someone made by hand: adopt it
        study.set_user_attr(SETTINGS_ATTR, settings)
        return
    ours, theirs = json.loads(json.dumps(settings)), stored
    for key in sorted(set(ours) | set(theirs)):
        if ours.get(key) != theirs.get(key):
            raise InputError(f"study {name!r} in {label} was made with other settings ({key}: {_short(theirs.get(key))}, "
                             f"this run: {_short(ours.get(key))}); use the same flags, another --study, or another -o")


def _wait_for_settings(study, seconds: float = 20.0):
    """The creator writes the settings right after creating the study: a worker that loaded it
    in between waits for them. A study with trials and no settings was made by hand."""
    deadline = time.monotonic() + seconds
    while (stored := study.user_attrs.get(SETTINGS_ATTR)) is None and not study.trials and time.monotonic() < deadline:
        time.sleep(0.5)
    return stored


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def recover(session: Session, exclusive: bool) -> list[int]:
    """Trials an earlier run left unfinished are tried again: those interrupted (Ctrl-C, the time
    budget) and, when this run holds the folder's lock, those still marked RUNNING (their process
    is gone). Returns the numbers re-queued."""
    import optuna

    study = session.study
    if exclusive:
        for trial in session.trials(("RUNNING",)):
            study._storage.set_trial_user_attr(trial._trial_id, "interrupted", "its process ended")
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    else:
        session.reap()
    queued = []
    alive = session.trials((*FINISHED, "RUNNING", "WAITING"))
    for trial in session.trials(("FAIL",)):
        params = _params(trial)
        if trial.user_attrs.get("interrupted") and params and not any(_params(t) == params for t in alive):
            study.enqueue_trial(params, user_attrs={"retry_of": trial.number})
            alive.append(trial)  # once per chain
            queued.append(trial.number)
    return queued


def _params(trial) -> dict:
    """The chain a trial stands for: the params it was queued with (a trial stopped while Optuna
    filled them in holds only some), else those it was given."""
    return trial.system_attrs.get("fixed_params") or trial.params


def silence_optuna() -> None:
    """Optuna logs every trial at INFO: the per-trial line is aiopt's own."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
