"""A study shared by workers on many machines, in an RDB storage (PostgreSQL, MySQL, SQLite):
the URL as given (driver, an unescaped "@"), shown without its password, and a storage that
lives through the server going away for a while.

- `postgresql://` is rewritten to the driver that is installed (psycopg 3, else psycopg2):
  SQLAlchemy 2 maps the bare scheme to psycopg 3 only.
- Every storage call that fails because the server cannot be reached (SQLAlchemy's
  OperationalError, also when Optuna wraps it in StorageInternalError) is tried again with
  backoff; after `timeout` seconds of outage it ends in StorageUnreachable (exit 2), naming the
  server. The clock is shared by the worker's threads: one outage, one deadline.
- Workers beat (Optuna's heartbeat, in a thread of ours that never prints a traceback): a worker
  silent for GRACE_BEATS beats is taken as dead by the others, its trial failed and queued again
  (Optuna's RetryHeartbeatStaleTrialCallback), and another worker runs it.
"""
from __future__ import annotations

import contextlib
import re
import threading
import time

from aiopt.errors import InputError, MissingDependencyError
from aiopt.optimize.config import DEFAULT_HEARTBEAT, DEFAULT_STORAGE_TIMEOUT, describe_duration
from aiopt.redact import mask_known, mask_secrets

GRACE_BEATS = 4  # beats missed before a worker's trial is taken as lost
MAX_RETRY = 2  # a chain whose trial is lost this many times (it kills its worker?) is not queued again
# driver module -> what to install for it
_DRIVER_PACKAGES = {"psycopg": "pip install 'aiopt[postgres]' (psycopg 3)", "psycopg2": "pip install psycopg2-binary",
                    "pymysql": "pip install pymysql", "MySQLdb": "pip install mysqlclient"}
_POSTGRES_DRIVERS = (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2"))
# scheme://user:password@host...: the password greedy up to the last "@" before the host
_USERINFO = re.compile(r"^(?P<head>[^:/]+://[^:/@]*:)(?P<password>.*)@(?P<tail>[^@/?#]*(?:[/?#].*)?)$", re.S)


class StorageUnreachable(InputError):
    """The study's server did not answer for longer than --storage-timeout."""


def escape_password(url: str) -> str:
    """A password with an unescaped "@" (postgresql://me:p@ss@host/db) escaped, so that the
    host is not read from the middle of the password."""
    match = _USERINFO.match(url)
    if match is None or "@" not in match["password"]:
        return url
    return f"{match['head']}{match['password'].replace('@', '%40')}@{match['tail']}"


def postgres_driver() -> str | None:
    """The PostgreSQL driver module installed, psycopg 3 first."""
    import importlib.util

    return next((module for module, _ in _POSTGRES_DRIVERS if importlib.util.find_spec(module) is not None), None)


def resolve_url(url: str) -> str:
    """The URL SQLAlchemy is given: password escaped, `postgresql://` (or `postgres://`) bound
    to the installed driver. No driver: MissingDependencyError naming the package."""
    from sqlalchemy.engine import make_url

    url = escape_password(url)
    parsed = make_url(url)
    if parsed.drivername not in ("postgresql", "postgres"):
        return url
    module = postgres_driver()
    if module is None:
        raise MissingDependencyError(f"--storage {describe_url(url)} needs a PostgreSQL driver: {_DRIVER_PACKAGES['psycopg']} "
                                     "or pip install psycopg2-binary")
    return parsed.set(drivername=dict(_POSTGRES_DRIVERS)[module]).render_as_string(hide_password=False)


def describe_url(url: str) -> str:
    """The URL as shown to people and written to reports: the password hidden."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(escape_password(url)).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 -- not a URL SQLAlchemy reads: mask what looks like one
        return mask_secrets(escape_password(url))


def password_of(url: str) -> str | None:
    try:
        from sqlalchemy.engine import make_url

        return make_url(escape_password(url)).password
    except Exception:  # noqa: BLE001
        return None


def server_of(url: str) -> str:
    """host:port of a server URL (the database file for SQLite), for messages."""
    from sqlalchemy.engine import make_url

    parsed = make_url(escape_password(url))
    if parsed.get_backend_name() == "sqlite":
        return f"SQLite {parsed.database}"
    ports = {"postgresql": 5432, "mysql": 3306}
    return f"{parsed.get_backend_name()} server {parsed.host or 'localhost'}:{parsed.port or ports.get(parsed.get_backend_name(), '?')}"


def open_rdb(url: str, timeout: float = DEFAULT_STORAGE_TIMEOUT, heartbeat: int = DEFAULT_HEARTBEAT, attempts: int = 5):
    """Optuna's RDBStorage for `url`, patient with outages (see the module's notes). Workers
    starting together race to create the tables ("table studies already exists", or a UNIQUE
    failure on alembic_version for the loser): the loser tries again and finds them."""
    import optuna


    resolved = resolve_url(url)
    engine = None
    if resolved.startswith(("postgresql", "mysql")):  # a dead pooled connection is replaced, not used
        engine = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    outage = Outage(timeout, server_of(url), [password_of(url)])
    storage_class = _patient_storage_class()
    for attempt in range(attempts):
        try:
            with no_optuna_warnings():
                retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
                return storage_class(resolved, outage, engine_kwargs=engine, heartbeat_interval=heartbeat,
                                     grace_period=GRACE_BEATS * heartbeat, heartbeat_stale_trial_callback=retry)
        except Exception as exc:  # noqa: BLE001 -- the driver's own error type
            racing = "already exists" in str(exc) or "UNIQUE constraint failed" in str(exc) or "database is locked" in str(exc)
            if not racing or attempt == attempts - 1:
                raise
            time.sleep(0.5 + attempt)


def missing_driver(exc: BaseException) -> str | None:
    """The install hint when `exc` (or what it wraps: Optuna's "Failed to import DB access
    module") says a database driver module is missing."""
    current: BaseException | None = exc
    while current is not None:
        name = getattr(current, "name", None) if isinstance(current, ImportError) else None
        match = re.search(r"No module named '([\w.]+)'", str(current))
        name = name or (match.group(1) if match else None)
        if name and name.split(".")[0] in _DRIVER_PACKAGES:
            return _DRIVER_PACKAGES[name.split(".")[0]]
        current = current.__cause__ or current.__context__
    return None


class Outage:
    """The clock of one worker's outage: set at the first call that cannot reach the server,
    cleared by the next that can; past `timeout` every call ends in StorageUnreachable."""

    def __init__(self, timeout: float, server: str, secrets: list[str | None]):
        self.timeout, self.server, self.secrets = timeout, server, secrets
        self.since: float | None = None
        self.recovered_at: float | None = None
        self.error = ""
        self.say = lambda message: None  # set by the search: messages while waiting
        self._lock = threading.Lock()

    def call(self, method, *args, **kwargs):
        delay = 0.5
        while True:
            try:
                result = method(*args, **kwargs)
            except Exception as exc:
                if isinstance(exc, StorageUnreachable) or not unreachable(exc):
                    raise
                waited = self._failed(exc)
                if waited >= self.timeout:
                    raise StorageUnreachable(self.message()) from None
                time.sleep(min(delay, self.timeout - waited))
                delay = min(delay * 2, 5.0)
            else:
                if self.since is not None:
                    self._recovered()
                return result

    def _failed(self, exc: BaseException) -> float:
        now = time.monotonic()
        with self._lock:
            first = self.since is None
            if first:
                self.since = now
            self.error = self.clean(_first_line(exc))
            since = self.since
        if first:

            self.say(f"storage {self.server} unreachable ({self.error}); trying again for up to {describe_duration(self.timeout)}")
        return now - since

    def _recovered(self) -> None:
        with self._lock:
            since, self.since = self.since, None
            self.recovered_at = time.monotonic()
        if since is not None:
            self.say(f"storage {self.server} answers again after {time.monotonic() - since:.0f} s")

    def recent(self, seconds: float) -> bool:
        """Whether the server was unreachable within the last `seconds` (or is now)."""
        return self.since is not None or (self.recovered_at is not None and time.monotonic() - self.recovered_at < seconds)

    def message(self) -> str:

        return (f"the study's storage, {self.server}, has not answered for {describe_duration(self.timeout)} (--storage-timeout): "
                f"{self.error}; start the server (or fix the network) and run this worker again: finished trials are kept")

    def clean(self, text: str) -> str:
        return mask_known(text, self.secrets)


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps) says the server cannot be reached: a refused or dropped
    connection, a timeout, a database that is locked or shutting down."""
    import sqlalchemy.exc as sa

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (sa.OperationalError, sa.InterfaceError, sa.TimeoutError)):
            return True
        if isinstance(current, sa.DBAPIError) and current.connection_invalidated:
            return True
        current = current.__cause__ or current.__context__
    return False


def _first_line(exc: BaseException) -> str:
    """The driver's own words, one line: the innermost cause says what happened."""
    inner = exc
    while inner.__cause__ is not None:
        inner = inner.__cause__
    text = str(getattr(inner, "orig", None) or inner).strip()
    return (text.splitlines() or [type(inner).__name__])[0][:200]


_PATIENT_CLASS = None


def _patient_storage_class():
    """RDBStorage whose every storage call goes through Outage.call (made once, on first use:
    Optuna is imported only by `aiopt optimize`)."""
    global _PATIENT_CLASS
    if _PATIENT_CLASS is not None:
        return _PATIENT_CLASS
    from optuna.storages import BaseStorage, RDBStorage

    class PatientRDBStorage(RDBStorage):
        def __init__(self, url: str, outage: Outage, **kwargs):
            self.outage = outage
            super().__init__(url, **kwargs)

    def patient(name: str):
        method = getattr(RDBStorage, name)

        def call(self, *args, **kwargs):
            return self.outage.call(method, self, *args, **kwargs)

        call.__name__, call.__doc__ = name, method.__doc__
        return call

    calls = {name for name in dir(BaseStorage) if not name.startswith("_") and name != "remove_session"}
    # and what Optuna's _CachedStorage (the study's wrapper) and heartbeat call beside them, each
    # in a session of its own (Optuna 5.1)
    calls |= {"record_heartbeat", "_get_stale_trial_ids", "_create_new_trial", "_get_trials", "_set_trial_param", "_get_best_trial_id"}
    for name in calls:
        setattr(PatientRDBStorage, name, patient(name))
    _PATIENT_CLASS = PatientRDBStorage
    return PatientRDBStorage


class Heartbeat:
    """Beats for one trial while it runs (Optuna's record_heartbeat, every heartbeat interval),
    in a daemon thread that stops quietly: an outage past the timeout is met by the main
    thread at its next storage call (one line, exit 2), not printed from here."""

    def __init__(self, storage, trial_id: int):
        self.storage, self.trial_id = storage, trial_id
        self.interval = beating(storage)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        if self.interval:
            self._thread = threading.Thread(target=self._beat, name=f"aiopt-heartbeat-{self.trial_id}", daemon=True)
            self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.is_set():
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # noqa: BLE001 -- StorageUnreachable and the like: the main thread reports it
                return
            if self._stop.wait(self.interval):
                return

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)  # one stuck in an outage's retry is a daemon: left behind


def beating(storage) -> int | None:
    """The heartbeat interval when `storage` has heartbeats on (a shared RDB storage), else None."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return storage.get_heartbeat_interval() if storage is not None and is_heartbeat_enabled(storage) else None


@contextlib.contextmanager
def no_optuna_warnings():
    """Heartbeats are "experimental" in Optuna 5: a warning a user can do nothing about."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield
