"""`aiopt optimize --storage postgresql://... --study NAME` on many workers, against a real
PostgreSQL server: a worker killed mid-trial and restarted (its chain is measured by another,
none lost, both reports agree), the server stopped and started mid-run (survived) and stopped
for good (one line, exit 2, naming the server), and no file written holds the password.

The server comes from scripts/postgres-for-tests.sh (which .ci/run sources): it exports
AIOPT_TEST_POSTGRES_URL, and AIOPT_TEST_POSTGRES_CTL (pg_ctl for its data directory) for the
outage test. Without them these tests skip. The first tests need no server: secrets masked,
the driver chosen, an unreachable port."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import run_cli, run_cli_brief, shared_folder

URL = os.environ.get("AIOPT_TEST_POSTGRES_URL")
CTL = os.environ.get("AIOPT_TEST_POSTGRES_CTL")
NO_SERVER = "no PostgreSQL server: source scripts/postgres-for-tests.sh (as .ci/run does) to set AIOPT_TEST_POSTGRES_URL"
FAST = ("--max-accuracy-drop", "0.1", "--finetune-epochs", "1", "--distill-epochs", "1", "-b", "1", "-b", "8", "--min-time", "0.05")
# quantize-only chains: seconds each, none needs training
CHAINS = ("quantize=fp32", "quantize=int8-dynamic", "quantize=int8-static-per-tensor")
LABELS = sorted(c.split("=")[1] for c in CHAINS)


# ---------------------------------------------------------------- no server needed

def test_secrets_are_masked_in_command_lines_urls_and_messages(monkeypatch):
    from aiopt.artifacts import command_line
    from aiopt.optimize.storage import describe_url, escape_password, server_of
    from aiopt.redact import mask_argv, mask_secrets

    assert describe_url("postgresql://me:p@ss@db.example:6543/search") == "postgresql://me:***@db.example:6543/search"
    assert escape_password("postgresql://me:p@ss@db.example/search") == "postgresql://me:p%40ss@db.example/search"
    assert server_of("postgresql://me:p@ss@db.example/search") == "postgresql server db.example:5432"
    assert mask_secrets("could not parse 'postgresql+psycopg://me:p@ss@h:1/d?sslpassword=x'") == \
        "could not parse 'postgresql+psycopg://me:***@h:1/d?sslpassword=***'"
    assert mask_argv(["--hf-token", "hf_abc", "--api-key=k1", "-o", "out"]) == ["--hf-token", "***", "--api-key=***", "-o", "out"]
    monkeypatch.setattr(sys, "argv", ["aiopt", "optimize", "m.pt", "--storage", "postgresql://me:p@ss@h/d", "-o", "out"])
    assert command_line() == "aiopt optimize m.pt --storage postgresql://me:***@h/d -o out"  # what artifacts and reports record


def test_postgresql_url_is_bound_to_the_installed_driver():
    from sqlalchemy.engine import make_url

    from aiopt.optimize.storage import missing_driver, postgres_driver, resolve_url

    driver = postgres_driver()
    if driver is None:
        pytest.skip("neither psycopg nor psycopg2 is installed (pip install 'aiopt[postgres]')")
    resolved = make_url(resolve_url("postgresql://me:p@ss@h:1/d"))
    assert resolved.drivername == f"postgresql+{driver}" and resolved.password == "p@ss" and resolved.host == "h"
    assert resolve_url("sqlite:///s.db") == "sqlite:///s.db"
    assert "psycopg2-binary" in missing_driver(ModuleNotFoundError("No module named 'psycopg2'", name="psycopg2"))


def test_unreachable_server_at_start_is_one_line_exit_2_without_the_password(tmp_path, tiny_cnn):
    from aiopt.optimize.storage import postgres_driver

    if postgres_driver() is None:
        pytest.skip("no PostgreSQL driver installed (pip install 'aiopt[postgres]')")
    result = run_cli("optimize", str(tiny_cnn), "-o", str(tmp_path / "out"), "--study", "s", "--trials", "1",
                     env={"AIOPT_STORAGE": "postgresql://me:Secret@pw@127.0.0.1:1/d"})
    assert result.returncode == 2, result.stderr
    line, = result.stderr.strip().splitlines()
    assert line.startswith("error: cannot open --storage postgresql://me:***@127.0.0.1:1/d") and "Secret" not in line
    if postgres_driver() != "psycopg2":  # a driver named in the URL and missing: exit 4 naming its package
        result = run_cli("optimize", str(tiny_cnn), "-o", str(tmp_path / "out"), "--study", "s", "--trials", "1",
                         "--storage", "postgresql+psycopg2://me:Secret@127.0.0.1:1/d")
        assert result.returncode == 4 and "pip install psycopg2-binary" in result.stderr and "Secret" not in result.stderr


def test_a_trial_whose_worker_stopped_beating_is_queued_again_and_not_taken_as_tried(tmp_path):
    """A worker that beats once and goes silent (killed): after the grace period the next reap
    fails its trial, Optuna's callback queues its chain again, and the trial neither counts
    toward --trials (its queued retry does) nor answers for its chain (real Optuna study, SQLite,
    heartbeats on)."""
    import optuna

    from aiopt.optimize.front import rows_from
    from aiopt.optimize.storage import GRACE_BEATS, open_rdb
    from aiopt.optimize.study import Session

    storage = open_rdb(f"sqlite:///{tmp_path / 's.db'}", timeout=5, heartbeat=1)
    study = optuna.create_study(storage=storage, study_name="s", directions=["maximize", "minimize"])
    session = Session(study, storage, "sqlite", True)
    study.enqueue_trial({"quantize": "fp32"})
    trial = session.ask()
    trial.suggest_categorical("quantize", ["fp32", "int8-dynamic"])
    trial.set_user_attr("chain", "fp32")
    with session.heartbeat(trial):
        time.sleep(0.2)  # one beat, then silence
    assert session.counted() == 1 and session.reap() == []
    time.sleep(GRACE_BEATS + 1.5)
    lost = session.reap()
    assert [t.number for t in lost] == [trial.number]
    assert session.counted() == 1 and session.retry_queued() and session.finished_like({"quantize": "fp32"}) is None
    retry = session.ask()
    assert retry.params == {"quantize": "fp32"} and retry.number > trial.number
    row = next(r for r in rows_from(session.trials()) if r.number == trial.number)
    assert row.lost and row.retried_as == retry.number and f"run again as trial {retry.number}" in row.reason


# ---------------------------------------------------------------- a real server

needs_server = pytest.mark.skipif(URL is None, reason=NO_SERVER)


@pytest.fixture
def server(tmp_path_factory):
    """The test server, held by one test at a time across xdist workers: two of these tests stop it
    (each study has a name of its own as well)."""
    from filelock import FileLock

    with FileLock(shared_folder(tmp_path_factory) / "postgresql-server.lock"):
        yield URL


def _password() -> str:
    from aiopt.optimize.storage import password_of

    return password_of(URL)


def _worker(model, outdir: Path, study: str, *extra: str, env: dict | None = None, url: str | None = URL,
            brief: bool = True) -> subprocess.Popen:
    """One `aiopt optimize` worker (quantize's timing brief unless `brief` is False: tests/brief_timing.py);
    its stdout and stderr go to files beside OUTDIR (grepped for the password)."""
    outdir.parent.mkdir(parents=True, exist_ok=True)
    storage = ("--storage", url) if url else ()
    log = outdir.parent / f"{outdir.name}.{uuid.uuid4().hex[:6]}"
    with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
        argv = ("optimize", str(model), "-o", str(outdir), *storage, "--study", study, *FAST, "--json", *extra)
        environment = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})}
        worker = (run_cli_brief(*argv, stdout=out, stderr=err, env=environment) if brief
                  else subprocess.Popen([sys.executable, "-m", "aiopt", *argv], stdout=out, stderr=err, env=environment))
    worker.log = log
    return worker


def _output(worker: subprocess.Popen) -> tuple[str, str]:
    return Path(f"{worker.log}.out").read_text(), Path(f"{worker.log}.err").read_text()


def _trials(study: str) -> list:
    import optuna

    from aiopt.optimize.storage import resolve_url

    try:
        return optuna.load_study(study_name=study, storage=resolve_url(URL)).get_trials(deepcopy=False)
    except KeyError:  # not created yet
        return []


def _wait_for(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _running_on(study: str, pid: int, number: int | None = None):
    return next((t for t in _trials(study) if t.state.name == "RUNNING" and t.user_attrs.get("worker", "").endswith(f":{pid}")
                 and (number is None or t.number == number)), None)


def _files_holding(folder: Path, secret: str) -> list[str]:
    needles = {secret.encode(), secret.replace("@", "%40").encode()}
    return [str(p) for p in folder.rglob("*") if p.is_file() and any(n in p.read_bytes() for n in needles)]


@needs_server
def test_worker_killed_mid_trial_its_chain_is_measured_by_another_and_no_file_holds_the_password(tmp_path, tiny_cnn, server):
    """Worker A (URL on its command line) and worker B (URL with a raw "@" in the password, from
    AIOPT_STORAGE) share a study of three chains; B is killed (SIGKILL) during its trial and
    started again. Its trial goes stale, is queued again and measured once by a live worker;
    every chain is measured once; both reports list the lost trial and agree on best and front."""
    study = f"kill-{uuid.uuid4().hex[:8]}"
    tries = [a for c in CHAINS for a in ("--try", c)]
    shared = ("--trials", "3", "--heartbeat", "2", *tries)  # a dead worker's trial is stale after 8 s
    # brief trials: both live workers may be idle at --trials when the dead worker's trial is reaped, the
    # race that once measured a sampled chain in place of the lost one (tests/test_optimize_race.py)
    a = _worker(tiny_cnn, tmp_path / "a", study, *shared)
    raw = URL.replace("%40", "@")
    b = _worker(tiny_cnn, tmp_path / "b", study, *shared, env={"AIOPT_STORAGE": raw}, url=None)
    killed = _wait_for(lambda: _running_on(study, b.pid), 300, "worker B to run a trial")
    b.send_signal(signal.SIGKILL)
    b.wait()
    b2 = _worker(tiny_cnn, tmp_path / "b", study, *shared, env={"AIOPT_STORAGE": raw}, url=None)
    documents = []
    for worker in (a, b2):
        worker.wait(timeout=600)
        out, err = _output(worker)
        assert worker.returncode == 0, err
        assert "Traceback" not in err
        documents.append(json.loads(out))
    trials = {t.number: t for t in _trials(study)}
    lost = trials[killed.number]
    assert lost.state.name == "FAIL"
    measured = [t for t in trials.values() if t.state.name in ("COMPLETE", "PRUNED") and "duplicate_of" not in t.user_attrs]
    assert sorted(t.user_attrs["chain"] for t in measured) == LABELS  # every chain measured once: none lost, none twice
    assert [t.number for t in trials.values() if t.state.name == "WAITING"] == []  # no retry left in the queue
    retry = next(t for t in measured if t.user_attrs["chain"] == killed.user_attrs["chain"])
    assert retry.user_attrs["worker"] != killed.user_attrs["worker"] and retry.number > killed.number
    for document in documents:
        assert document["study"]["lost"] == [{"trial": killed.number, "chain": killed.user_attrs["chain"],
                                              "worker": killed.user_attrs["worker"], "retried_as": retry.number}]
        assert document["study"]["trials"].get("complete", 0) + document["study"]["trials"].get("pruned", 0) == 3
    assert documents[0]["best"]["trial"] == documents[1]["best"]["trial"] and documents[0]["front"] == documents[1]["front"]
    assert "--storage postgresql://aiopt:***@" in documents[0]["command"]
    assert _files_holding(tmp_path, _password()) == []  # artifacts' metadata, reports, reproduce.sh, trial.json, logs


@needs_server
@pytest.mark.skipif(CTL is None, reason="AIOPT_TEST_POSTGRES_CTL (pg_ctl for the test server) is not set: " + NO_SERVER)
def test_server_stopped_mid_trial_then_started_is_survived_and_stopped_for_good_ends_in_one_line(tmp_path, tiny_cnn, server):
    study = f"outage-{uuid.uuid4().hex[:8]}"
    ctl = shlex.split(CTL)
    worker = _worker(tiny_cnn, tmp_path / "w", study, "--trials", "2", "--heartbeat", "5", "--storage-timeout", "20s",
                     "--try", CHAINS[0], "--try", CHAINS[1])
    try:
        _wait_for(lambda: _running_on(study, worker.pid, 0), 300, "the first trial")
        subprocess.run([*ctl, "-m", "fast", "-w", "stop"], check=True, capture_output=True)
        time.sleep(8)  # an outage
        subprocess.run([*ctl, "-w", "start"], check=True, capture_output=True)
        _wait_for(lambda: _running_on(study, worker.pid, 1), 300, "the second trial")
        subprocess.run([*ctl, "-m", "fast", "-w", "stop"], check=True, capture_output=True)  # for good
        worker.wait(timeout=300)
    finally:
        subprocess.run([*ctl, "-w", "start"], capture_output=True)
        if worker.poll() is None:
            worker.kill()
    _, err = _output(worker)
    assert worker.returncode == 2, err
    assert "Traceback" not in err and "unreachable" in err and "answers again after" in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    server = URL.rsplit("@", 1)[1].split("/")[0]
    assert len(errors) == 1 and f"postgresql server {server}" in errors[0] and "--storage-timeout" in errors[0], err
    states = {t.number: t.state.name for t in _trials(study)}
    assert states[0] == "COMPLETE"  # measured across the first outage
    assert states[1] in ("RUNNING", "FAIL")  # left to go stale, or failed if the server answered in time
    assert _files_holding(tmp_path, _password()) == []


@needs_server
@pytest.mark.skipif(CTL is None, reason="AIOPT_TEST_POSTGRES_CTL (pg_ctl for the test server) is not set: " + NO_SERVER)
@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_every_storage_call_of_a_study_lives_through_server_restarts(server):
    """Threads ask, beat, set attributes, tell and read while the server is stopped and started
    twice: no call fails (every path Optuna's study takes to the storage is patient)."""
    import threading

    import optuna

    from aiopt.optimize.storage import open_rdb
    from aiopt.optimize.study import silence_optuna

    silence_optuna()
    storage = open_rdb(URL, timeout=60, heartbeat=5)
    study = optuna.create_study(storage=storage, study_name=f"restarts-{uuid.uuid4().hex[:8]}", directions=["maximize", "minimize"])
    stop, errors = threading.Event(), []

    def work() -> None:
        while not stop.is_set():
            try:
                trial = study.ask()
                storage.record_heartbeat(trial._trial_id)
                trial.suggest_categorical("quantize", ["fp32", "int8-dynamic"])
                trial.set_user_attr("chain", "x" * 100)
                study.tell(trial, [1.0, 2.0])
                study.get_trials(deepcopy=False)
            except Exception as exc:  # noqa: BLE001 -- what the test is looking for
                errors.append(repr(exc))
                return

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    ctl = shlex.split(CTL)
    try:
        for _ in range(2):
            time.sleep(1.5)
            subprocess.run([*ctl, "-m", "fast", "-w", "stop"], check=True, capture_output=True)
            time.sleep(2)
            subprocess.run([*ctl, "-w", "start"], check=True, capture_output=True)
        time.sleep(2)
    finally:
        stop.set()
        subprocess.run([*ctl, "-w", "start"], capture_output=True)  # already running: a no-op
        for thread in threads:
            thread.join(timeout=90)
    assert errors == [] and len(study.get_trials()) > 2
