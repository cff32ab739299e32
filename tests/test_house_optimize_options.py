"""`aiopt optimize` declares each option once, on its OptimizeConfig field (aiopt.options), like the
steps' commands: the command's typer options are generated from there, flag, default and help agree,
and every flag the command took before builds the config it built before."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import replace
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from aiopt.cli import app
from aiopt.cli.optimize import optimize_config
from aiopt.optimize.config import TRIAL_LATENCY, OptimizeConfig
from aiopt.options import command_default, declared_options

COMMAND = typer.main.get_command(app).commands["optimize"]
DECLARED = declared_options(OptimizeConfig)
ROOT = Path(__file__).resolve().parent.parent
# the command's flags as it declared them by hand (aiopt/cli/optimize.py at c9cbf15)
FLAGS_BEFORE = {"--output", "-o", "--target", "--max-accuracy-drop", "--min-cosine", "--max-perplexity-increase", "--objective",
                "--batch-size", "-b", "--time-budget", "--trials", "--storage", "--storage-timeout", "--heartbeat", "--study", "--keep",
                "--try", "--sampler", "--finetune-epochs", "--distill-epochs", "--data", "--calibration", "--seq-len", "--min-time",
                "--threads", "--seed", "--json"}


def _param(flag: str):
    found = [p for p in COMMAND.params if flag in p.opts]
    assert len(found) == 1, f"optimize has no option {flag}"
    return found[0]


def _config(*argv: str) -> OptimizeConfig:
    """The config the command builds from this command line (parsed by click, as `aiopt optimize` parses it)."""
    with COMMAND.make_context("optimize", ["model.pt", "-o", "out", *argv]) as context:
        return optimize_config({k: v for k, v in context.params.items() if k not in ("model", "output", "as_json")})


def test_every_setting_a_user_gives_is_declared_on_its_field_and_none_by_hand():
    fields = {f.name for f in dataclasses.fields(OptimizeConfig)}
    assert fields - set(DECLARED) == {"lm"}  # quantize's LM measurement settings: set from Python, no flag
    own = {p.name for p in COMMAND.params if p.name not in DECLARED}
    assert own == {"model", "output", "as_json"}, own  # the command's argument, its output and --json; the rest is generated
    assert {flag for p in COMMAND.params if p.param_type_name == "option" for flag in p.opts} == FLAGS_BEFORE


@pytest.mark.parametrize("field", sorted(DECLARED))
def test_flag_default_and_help_agree_with_the_declaration(field):
    declared = DECLARED[field]
    param = _param(declared.flags[0])
    assert param.name == field and set(param.opts) == set(declared.flags)
    assert param.help == declared.help
    assert param.envvar == declared.envvar
    cli_default = command_default(OptimizeConfig, field, declared)
    assert param.default == cli_default
    default = next(f.default for f in dataclasses.fields(OptimizeConfig) if f.name == field)
    if declared.parse is not None and cli_default is not None:  # the flag's text, parsed, is the field's default
        assert declared.parse(cli_default, declared.flags[0]) == default
    elif cli_default is not None:
        assert cli_default == default
    else:  # "not given": the field's default, or (--time-budget) the command's rule
        assert _config() == OptimizeConfig()


def test_without_flags_the_config_is_the_default_one():
    assert _config() == OptimizeConfig()
    assert OptimizeConfig().latency == TRIAL_LATENCY


def test_every_flag_at_once_builds_the_config_the_hand_written_options_built():
    config = _config("--target", "cuda", "--max-accuracy-drop", "0.02", "--max-perplexity-increase", "0.05", "--objective", "size",
                     "-b", "1", "--batch-size", "8", "--time-budget", "1h30m", "--trials", "7", "--storage", "sqlite:///s.db",
                     "--storage-timeout", "90s", "--heartbeat", "10", "--study", "shared", "--keep", "all",
                     "--try", "prune=0.5,quantize=int8-dynamic", "--try", "fp32", "--sampler", "nsga2", "--finetune-epochs", "2",
                     "--distill-epochs", "3", "--data", "digits", "--calibration", "mnist1d", "--seq-len", "64", "--min-time", "0.3",
                     "--threads", "2", "--seed", "5")
    assert config == OptimizeConfig(target="cuda", max_accuracy_drop=0.02, max_perplexity_increase=0.05, objective="size",
                                    batch_sizes=(1, 8), time_budget=5400.0, trials=7, storage="sqlite:///s.db", storage_timeout=90.0,
                                    heartbeat=10, study="shared", keep="all", tries=("prune=0.5,quantize=int8-dynamic", "fp32"),
                                    sampler="nsga2", finetune_epochs=2, distill_epochs=3, data="digits", calibration="mnist1d",
                                    seq_len=64, min_time=0.3, threads=2, seed=5)
    assert config.latency == replace(TRIAL_LATENCY, min_time=0.3)
    assert _config("--min-cosine", "0.98").min_cosine == 0.98  # the other budget (the two exclude each other)


def test_time_budget_defaults_to_20m_unless_trials_alone_bound_the_search():
    assert _config().time_budget == 20 * 60.0
    assert _config("--trials", "3").time_budget is None
    assert _config("--trials", "3", "--time-budget", "90").time_budget == 90.0
    assert _config("--storage-timeout", "2m").storage_timeout == 120.0


def test_storage_is_read_from_aiopt_storage_when_not_given(monkeypatch):
    monkeypatch.setenv("AIOPT_STORAGE", "sqlite:///from-env.db")
    assert _config().storage == "sqlite:///from-env.db"
    assert _config("--storage", "sqlite:///given.db").storage == "sqlite:///given.db"


@pytest.mark.parametrize("flag", ["--time-budget", "--storage-timeout"])
def test_a_duration_that_is_not_one_is_refused_in_one_line_exit_2(flag, tmp_path):
    result = CliRunner().invoke(app, ["optimize", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "out"), flag, "soon"],
                                env={"NO_COLOR": "1", "COLUMNS": "200"})
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{flag} 'soon' is not a duration" in errors[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_every_flag_the_documentation_shows_for_optimize_is_taken():
    documented = set()
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for line in page.read_text().splitlines():
            if "aiopt optimize" in line:
                documented |= set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", line.split("aiopt optimize", 1)[1]))
    assert documented, "no `aiopt optimize` command line in README.md or docs/"
    taken = {flag for p in COMMAND.params for flag in p.opts + p.secondary_opts} | {"--help"}
    assert documented <= taken, documented - taken
