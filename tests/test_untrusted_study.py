"""A study journal cut short (issue 23): cut at every byte offset of its last record, the study
opens through aiopt's storage (the hook in open_storage), keeps every complete trial, accepts new
ones, leaves the original as a backup beside it and says so in one warning line. Damage in the
middle is one line (exit 2). The stale-lock message names the lock file."""
from __future__ import annotations

import os

import pytest

optuna = pytest.importorskip("optuna")

from aiopt.errors import InputError  # noqa: E402
from aiopt.optimize.journal_repair import repair_journal  # noqa: E402
from aiopt.optimize.study import JOURNAL, OutdirLock, open_storage  # noqa: E402


def finished_study(folder, trials=3):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder.mkdir(exist_ok=True)
    storage = open_storage(None, folder)
    study = optuna.create_study(storage=storage, study_name="s")
    for i in range(trials):
        trial = study.ask()
        trial.suggest_int("k", 0, 10)
        study.tell(trial, float(i))
    return (folder / JOURNAL).read_bytes()


def complete(folder):
    study = optuna.load_study(study_name="s", storage=open_storage(None, folder))
    return study, [t.number for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))]


def test_a_journal_cut_at_every_offset_of_its_last_record_resumes(tmp_path, capsys):
    whole = finished_study(tmp_path / "whole")
    start = whole.rstrip(b"\n").rfind(b"\n") + 1  # where the last record begins
    _, every = complete(tmp_path / "whole")
    for offset in range(start + 1, len(whole)):
        folder = tmp_path / f"cut{offset}"
        folder.mkdir()
        (folder / JOURNAL).write_bytes(whole[:offset])
        capsys.readouterr()
        study, numbers = complete(folder)
        warning = capsys.readouterr().err.strip().splitlines()
        backups = [p for p in folder.iterdir() if p.name.startswith(JOURNAL + ".torn-")]
        assert len(backups) == 1 and backups[0].read_bytes() == whole[:offset], offset
        assert len(warning) == 1 and warning[0].startswith("warning: ") and str(backups[0]) in warning[0], warning
        # every complete trial is kept: the cut record was the last trial's final state at most
        assert set(numbers) <= set(every) and len(numbers) >= len(every) - 1, (offset, numbers)
        if offset == len(whole) - 1:  # only the newline was missing: nothing lost
            assert numbers == every
        trial = study.ask()  # the study takes new records, and reads back whole
        study.tell(trial, 1.0)
        _, after = complete(folder)
        assert after == [*numbers, trial.number] or sorted(after) == sorted([*numbers, trial.number])
        assert capsys.readouterr().err == ""  # repaired once: no warning the second time


def test_a_whole_journal_is_left_alone_and_middle_damage_is_one_line(tmp_path):
    whole = finished_study(tmp_path)
    assert repair_journal(tmp_path / JOURNAL) is None and (tmp_path / JOURNAL).read_bytes() == whole
    lines = whole.split(b"\n")
    lines[2] = lines[2][:10]
    (tmp_path / JOURNAL).write_bytes(b"\n".join(lines))
    with pytest.raises(InputError, match="line 3 is not a journal record"):
        open_storage(None, tmp_path)
    assert not any(p.name.startswith(JOURNAL + ".torn-") for p in tmp_path.iterdir())


def test_a_stale_lock_names_the_file_to_remove(tmp_path):
    (tmp_path / ".optimize.lock").write_text(str(os.getppid()))  # a live process that is not an aiopt optimize
    with pytest.raises(InputError) as caught:
        OutdirLock(tmp_path).__enter__()
    assert str(tmp_path / ".optimize.lock") in str(caught.value) and "remove the lock file" in str(caught.value)
