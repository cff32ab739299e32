"""`aiopt optimize` on a tiny CNN: chains run as the CLI runs them, the reports and reproduce.sh,
resuming after a re-run or Ctrl-C, two workers sharing one study, and every bad input of the
issue. Trials are fixed with --try so each test knows which chains run; fine-tuning and
distillation take one epoch and latency is timed briefly (no timing is asserted), quantize's
choice included: the searches run `python -m aiopt` through tests/brief_timing.py."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli_brief

FAST = ("--finetune-epochs", "1", "--distill-epochs", "1", "-b", "1", "-b", "8", "--min-time", "0.05")
PRUNED_INT8 = "prune=0.3,quantize=int8-static-per-channel"
COLLAPSES = "prune=0.7,quantize=int8-dynamic"  # one epoch cannot bring back a 70% cut: pruned at the prune step
DYNAMIC = "quantize=int8-dynamic"
FP32 = "quantize=fp32"
# The tiny model is 66% accurate after 3 epochs; pruning 30% with one epoch of fine-tuning and INT8
# cost it about 6 points: a budget of 10 points keeps that chain, while a 70% cut collapses. Which
# chains win must not hang on timings (a tiny model's latency and even its size, mostly metadata and
# variants quantize keeps only when they cost no speed, move from run to run): the tests pick chains
# whose ranking is clear by quality or by a large margin.
BUDGET = ("--max-accuracy-drop", "0.1")


def _optimize(model, outdir, *extra: str) -> subprocess.CompletedProcess:
    process = _optimize_process(model, outdir, *extra)
    out, err = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _trial_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("trial ")]


def _finished(document: dict) -> list[dict]:
    return [t for t in document["trials"] if t["state"] in ("COMPLETE", "PRUNED", "FAIL") and t["duplicate_of"] is None
            and not t["interrupted"]]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_cnn):
    outdir = tmp_path_factory.mktemp("optimize") / "out"
    result = _optimize(tiny_cnn, outdir, "--trials", "2", "--try", PRUNED_INT8, "--try", COLLAPSES)
    assert result.returncode == 0, result.stderr
    return outdir, json.loads(result.stdout), result.stderr


@pytest.mark.slow  # with first_run: a whole search (two chains) in a fresh process
def test_chain_reports_reproduce_script_and_chosen_artifact(first_run, tiny_cnn):
    from aiopt.evaluate import eval_data, run_batches
    from aiopt.measure.deployed import deployed_runner
    from aiopt.measure.quality import compare_outputs

    outdir, document, stderr = first_run
    assert len(_trial_lines(stderr)) == 2  # one line per trial, on stderr
    best = document["best"]
    assert best["chain"] == "prune 0.3 > int8-static-per-channel"
    chosen = next(t for t in document["trials"] if t["trial"] == best["trial"])
    assert [s["step"] for s in chosen["steps"]] == ["prune", "quantize"]
    assert chosen["steps"][1]["source"] == chosen["steps"][0]["path"]  # the quantize step read the pruned checkpoint
    # the chosen artifact, as written to OUTDIR, on the runtime it ships for, meets the budget on the test split
    runner, runtime = deployed_runner(best["artifact"])
    reference, _ = deployed_runner(outdir / "reference.fp32.onnx")
    data = eval_data(runner.input_spec, {"dataset": {"name": "mnist1d"}})
    quality = compare_outputs(run_batches(reference, data)[0], run_batches(runner, data)[0], data.labels)
    assert runtime == best["runtime"] and quality["accuracy_drop"] <= 0.1
    assert quality["accuracy"] == pytest.approx(best["quality"]["accuracy"])
    # reports: JSON as printed, Markdown with every chain, HTML with the plot inline
    assert json.loads((outdir / "report.json").read_text())["best"] == best
    assert "prune 0.3 > int8-static-per-channel" in (outdir / "report.md").read_text()
    assert "data:image/png;base64," in (outdir / "report.html").read_text()
    assert set(document["front"]) <= {t["trial"] for t in document["trials"]}
    script = (outdir / "reproduce.sh").read_text()
    assert 'aiopt prune "$MODEL" --method channel --sparsity 0.3 --finetune-epochs 1 -o "$WORK/1-prune.pt"' in script
    assert 'aiopt quantize "$WORK/1-prune.pt"' in script and "--candidate int8-static-per-channel" in script
    for trial in document["trials"]:  # --keep pareto: artifacts off the front are gone, their records stay
        folder = outdir / "trials" / f"{trial['trial']:04d}"
        if not folder.is_dir():  # a repeat of an earlier chain runs nothing
            continue
        kept = sorted(p.name for p in folder.iterdir())
        assert "trial.json" in kept and (len(kept) > 1) == (trial["trial"] in document["front"] or trial["trial"] == best["trial"])


def test_quantize_own_choice_is_in_the_space_and_tried_first(tiny_cnn, tmp_path):
    """`auto` (quantize with no flags: every recipe measured, routes by batch size) comes first, so
    the search starts from what `aiopt quantize` gives; its step forces no candidate."""
    from aiopt.artifacts import load_model
    from aiopt.optimize.config import OptimizeConfig
    from aiopt.optimize.space import AUTO, first_guesses, space_for
    from aiopt.optimize.trial import ChainRunner

    space = space_for(load_model(tiny_cnn), OptimizeConfig())
    assert space.quantize[0] == AUTO and len(space.quantize) > 1
    assert [c.label() for c in first_guesses(space)] == ["prune 0.5 > auto", "prune 0.7 > auto", "auto"]
    assert space.parse("prune=0.3").quantize == AUTO
    runner = ChainRunner(tiny_cnn, tmp_path, space, OptimizeConfig(), reference=None, say=print)
    (name, config), = runner.plan(space.parse("quantize=auto"))
    assert name == "quantize" and config.candidates == () and config.by_measurement
    (_, forced), = runner.plan(space.parse("quantize=int8-dynamic"))
    assert forced.candidates == ("int8-dynamic",)


def test_a_sampler_stuck_on_tried_chains_gets_an_untried_one_queued():
    """TPE keeps asking for chains it has seen once it believes it knows the best: after
    MAX_REPEATS of them the search queues a chain not tried yet instead of stopping with budget
    left, and says the space is explored only when none is left (real Optuna study in memory)."""
    import optuna

    from aiopt.optimize.config import OptimizeConfig
    from aiopt.optimize.search import _Search
    from aiopt.optimize.space import SearchSpace
    from aiopt.optimize.study import Session

    space = SearchSpace((0.0,), (0.0, 0.5), ("auto", "int8-dynamic"), 1, 1)
    study = optuna.create_study(directions=["maximize", "minimize"])

    def run(expected=None):
        trial = study.ask()
        chain = space.suggest(trial)
        assert expected is None or chain == expected
        study.tell(trial, [1.0, 1.0])

    for chain in space.chains()[:3]:
        study.enqueue_trial(chain.params)
        run(chain)
    search = object.__new__(_Search)
    search.session, search.space, search.config, messages = Session(study, None, "memory", True), space, OptimizeConfig(), []
    search.say = messages.append
    assert search._queue_untried() and "one of 1 not tried yet" in messages[-1]
    run(space.chains()[3])
    assert not search._queue_untried()


@pytest.mark.slow  # first_run, then reproduce.sh rebuilds the chain
def test_reproduce_script_rebuilds_the_chosen_artifact(first_run, tmp_path):
    outdir, document, _ = first_run
    # the script's `aiopt` is the entry point with quantize's timing brief, as in the search (tests/brief_timing.py)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "aiopt").write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).parent / "brief_timing.py"}" "$@"\n')
    (bin_dir / "aiopt").chmod(0o755)
    result = subprocess.run(["bash", str(outdir / "reproduce.sh"), document["model_path"], str(tmp_path / "work")], capture_output=True,
                            text=True, env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    from aiopt.artifacts import load_model

    rebuilt = load_model(tmp_path / "work" / "2-quantize.onnx")
    assert rebuilt.metadata["metrics"]["accuracy"] == pytest.approx(document["best"]["quality"]["accuracy"], abs=0.002)


@pytest.mark.slow  # first_run, then a second search
def test_rerun_with_more_trials_runs_only_the_missing_one(first_run, tiny_cnn, tmp_path):
    outdir = tmp_path / "out"
    shutil.copytree(first_run[0], outdir)
    before = {t["trial"]: t for t in first_run[1]["trials"]}
    result = _optimize(tiny_cnn, outdir, "--trials", "3", "--try", PRUNED_INT8, "--try", COLLAPSES)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["study"]["run_by_this_process"] == 1
    assert len(_finished(document)) == 3
    for trial in document["trials"]:
        if trial["trial"] in before:  # finished trials are read back, not run again
            assert trial["measured"] == before[trial["trial"]]["measured"]


def _optimize_process(model, outdir, *extra: str) -> subprocess.Popen:
    def as_at_a_terminal() -> None:  # a background runner may leave SIGINT ignored
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    return run_cli_brief("optimize", str(model), "-o", str(outdir), *BUDGET, *FAST, "--json", *extra,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=as_at_a_terminal,
                         env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})


def _study_trials(url: str, name: str = "aiopt-optimize") -> list:
    import optuna

    return optuna.load_study(study_name=name, storage=url).get_trials()


def _journal_url(outdir: Path):
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(str(outdir / "study.journal")))


@pytest.mark.slow  # a search interrupted, then resumed
def test_ctrl_c_mid_search_then_rerun_loses_no_finished_trial(tmp_path, tiny_cnn):
    outdir = tmp_path / "out"
    tries = ("--try", FP32, "--try", DYNAMIC, "--try", PRUNED_INT8)
    process = _optimize_process(tiny_cnn, outdir, "--trials", "3", *tries)
    for line in process.stderr:  # the first trial is finished: Ctrl-C during the second
        if line.startswith("trial "):
            break
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert not (outdir / ".optimize.lock").exists()
    finished = {t.number: t.values for t in _study_trials(_journal_url(outdir)) if t.state.name == "COMPLETE"}
    assert finished  # the first trial is in the study
    result = _optimize(tiny_cnn, outdir, "--trials", "3", *tries)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    for trial in _study_trials(_journal_url(outdir)):
        if trial.number in finished:
            assert trial.values == finished[trial.number]  # kept, not run again
    chains = [t["chain"] for t in _finished(document)]
    assert sorted(chains) == sorted(["fp32", "int8-dynamic", "prune 0.3 > int8-static-per-channel"])  # each once: none lost, none twice
    assert document["study"]["run_by_this_process"] == 3 - len(finished)


@pytest.mark.slow  # two searches in two processes on one study
def test_two_workers_share_one_study_and_find_the_front_one_process_finds(tmp_path, tiny_cnn):
    from aiopt.optimize.front import pareto, rows_from

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    # FP32 on ONNX Runtime is the most accurate; pruned FP32 on OpenVINO is less accurate and, on a
    # model this small, several times slower (OpenVINO's per-call overhead): off the front in any run.
    tries = (FP32, "prune=0.3,quantize=fp32-openvino", COLLAPSES)
    shared = ("--storage", url, "--study", "fleet", "--trials", "3", *[a for t in tries for a in ("--try", t)])
    workers = [_optimize_process(tiny_cnn, tmp_path / f"worker{i}", *shared) for i in (1, 2)]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err
    trials = [t for t in _study_trials(url, "fleet") if "duplicate_of" not in t.user_attrs and "spare" not in t.user_attrs]
    assert sorted((t.user_attrs["chain"], t.state.name) for t in trials) == [  # none lost, none run twice
        ("fp32", "COMPLETE"), ("prune 0.3 > fp32-openvino", "COMPLETE"), ("prune 0.7 > int8-dynamic", "PRUNED")]
    # the front of the shared study is the one a single process finds: the two workers' measurements
    # go into one Pareto front, and by the construction above it is FP32 on ONNX Runtime alone (a third
    # search, run alone, gave the same front and only cost time)
    assert sorted(r.chain for r in pareto(rows_from(trials))) == ["fp32"]


# ---------------------------------------------------------------- bad input

def _cli(*args: str):
    """The real CLI in this process: the heavy libraries are already imported."""
    from typer.testing import CliRunner

    from aiopt.cli import app

    return CliRunner().invoke(app, list(args), env={"NO_COLOR": "1", "COLUMNS": "200"})


def _one_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_budget_no_candidate_meets_exits_1_listing_the_closest(tmp_path, tiny_cnn):
    outdir = tmp_path / "out"
    result = _cli("optimize", str(tiny_cnn), "-o", str(outdir), "--max-accuracy-drop", "0.001", "--trials", "1",
                  "--try", "prune=0.7,quantize=int8-dynamic", *FAST)
    assert result.exit_code == 1, result.stderr
    line = _one_line(result)
    assert "no candidate meets the budget" in line and "closest: #0 prune 0.7 > int8-dynamic" in line
    document = json.loads((outdir / "report.json").read_text())
    assert document["best"] is None and document["closest"] == [0]
    assert not (outdir / "reproduce.sh").exists() and "chosen" not in result.stdout
    assert "No candidate meets the budget" in (outdir / "report.md").read_text()


def test_unreachable_storage_exits_2(tmp_path, tiny_cnn):
    result = _cli("optimize", str(tiny_cnn), "-o", str(tmp_path / "out"), "--storage", f"sqlite:///{tmp_path}/missing/dir/s.db", "--trials", "1")
    assert result.exit_code == 2
    assert "cannot open --storage" in _one_line(result)


@pytest.mark.slow  # needs first_run's study (a whole search)
def test_study_made_with_other_settings_exits_2(first_run, tiny_cnn, tmp_path):
    outdir = tmp_path / "out"
    shutil.copytree(first_run[0], outdir)
    result = _cli("optimize", str(tiny_cnn), "-o", str(outdir), "--objective", "size", "--max-accuracy-drop", "0.1", "--trials", "3", *FAST)
    assert result.exit_code == 2
    assert "made with other settings (objective" in _one_line(result)


def test_target_cuda_without_gpu_exits_4(tmp_path, tiny_cnn):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = _cli("optimize", str(tiny_cnn), "-o", str(tmp_path / "out"), "--target", "cuda", "--trials", "1")
    assert result.exit_code == 4
    assert "--target cuda" in _one_line(result)


def test_time_budget_too_small_for_one_trial_says_so(tmp_path, tiny_cnn):
    # 0.05 s: the setup (export and measure the FP32 reference) alone takes longer, however fast the trials
    result = _cli("optimize", str(tiny_cnn), "-o", str(tmp_path / "out"), "--time-budget", "0.05s", *FAST)
    assert result.exit_code == 2
    assert "--time-budget 0.05s is too small for one trial" in _one_line(result)


def test_second_run_on_one_folder_refuses_and_a_stale_lock_is_taken_over(tmp_path, tiny_cnn):
    from aiopt.optimize.study import OutdirLock

    outdir = tmp_path / "out"
    outdir.mkdir()
    running = subprocess.Popen(["sleep", "60"])  # stands for a first run, alive
    try:
        (outdir / ".optimize.lock").write_text(str(running.pid))
        result = _cli("optimize", str(tiny_cnn), "-o", str(outdir), "--trials", "1")
        assert result.exit_code == 2
        assert f"another aiopt optimize (pid {running.pid}) is writing" in _one_line(result)
    finally:
        running.kill()
        running.wait()
    with OutdirLock(outdir):  # its process is gone: the lock is stale
        assert (outdir / ".optimize.lock").read_text() == str(os.getpid())
    assert not (outdir / ".optimize.lock").exists()
