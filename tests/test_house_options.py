"""Each option of `aiopt bench`, `generate`, `train`, `inspect`, `run` and `compare` is declared once,
on the config field that consumes it (aiopt.options), as quantize's and optimize's are: the command's
typer options are generated from there, so flag, default and help cannot drift; every flag the
commands took when they declared them by hand is still there, and `--help` shows each default."""
from __future__ import annotations

import dataclasses

import pytest
import typer
import typer.rich_utils
from typer.testing import CliRunner

from aiopt.bench.generative import GenerativeBenchConfig
from aiopt.bench.measure import BenchConfig
from aiopt.bench.report import ReportConfig
from aiopt.cli import app
from aiopt.cli.options import config_from
from aiopt.compare import CompareConfig
from aiopt.inspect import InspectConfig
from aiopt.llm.generate import GenerateConfig, GenerateRuntime
from aiopt.measure.latency import LatencyConfig
from aiopt.measure.run_outputs import RunConfig
from aiopt.options import command_default, declared_options, field_default
from aiopt.reference_models.train import TrainOptions

# command -> the configs its options are generated from
CONFIGS = {
    "bench": (BenchConfig, LatencyConfig, GenerativeBenchConfig, ReportConfig),
    "generate": (GenerateConfig, GenerateRuntime),
    "train": (TrainOptions,),
    "inspect": (InspectConfig,),
    "run": (RunConfig,),
    "compare": (CompareConfig,),
}
# what a command still declares itself: its inputs and outputs, and the options every command
# shares (aiopt.cli.options: --json, --force, --trust-pickle, --input-shape, --input-dtype)
OWN = {
    "bench": {"force", "input_shape", "input_dtype"},
    "generate": {"prompt", "as_json"},
    "train": {"output", "force", "as_json"},
    "inspect": {"input_shape", "input_dtype", "trust_pickle", "as_json"},
    "run": {"input", "output", "input_shape", "input_dtype", "trust_pickle", "force", "as_json"},
    "compare": {"input_shape", "input_dtype", "trust_pickle", "as_json"},
}
# the commands' flags when each command declared them by hand (aiopt/cli/{bench,generate,models}.py at 0588831)
FLAGS_BEFORE = {
    "bench": {"--backend", "--device", "--batch-size", "-b", "--warmup", "--min-runs", "--rounds", "--min-time", "--threads", "--data",
              "--seq-len", "--input-shape", "--input-dtype", "--no-baseline", "--json", "--markdown", "--html", "--plots", "--baseline",
              "--max-regression", "--max-accuracy-drop", "--prompt-len", "--new-tokens", "--perplexity-tokens", "--force"},
    "generate": {"--prompt", "-p", "--max-new-tokens", "-n", "--greedy", "--sample", "--temperature", "--seed", "--threads", "--runtime", "--json"},
    "train": {"--dataset", "-d", "--epochs", "--seed", "--output", "-o", "--device", "--force", "--json"},
    "inspect": {"--input-shape", "--input-dtype", "--trust-pickle", "--kv-tokens", "--json"},
    "run": {"--input", "-i", "--output", "-o", "--backend", "--device", "--seq-len", "--input-shape", "--input-dtype", "--trust-pickle",
            "--force", "--json"},
    "compare": {"--data", "--device", "--seq-len", "--input-shape", "--input-dtype", "--input", "--trust-pickle", "--json"},
}
COMMANDS = typer.main.get_command(app).commands


def _options(command: str) -> list:
    return [p for p in COMMANDS[command].params if p.param_type_name == "option"]


def _declarations(command: str) -> dict[str, list[tuple[type, object]]]:
    """Field name -> every (config, Option) of the command's configs that declares a flag for it."""
    found: dict[str, list] = {}
    for config in CONFIGS[command]:
        for field, declared in declared_options(config).items():
            found.setdefault(field, []).append((config, declared))
    return found


def _flags(declared) -> set[str]:
    """A declaration's flags as click holds them: "--greedy/--sample" is two, " /--no-baseline" one."""
    return {f.strip() for flag in declared.flags for f in flag.split("/") if f.strip()}


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_every_option_comes_from_exactly_one_config_field(command):
    declarations = _declarations(command)
    for field, where in declarations.items():
        assert len(where) == 1, f"{command}: {field} is declared by {[c.__name__ for c, _ in where]}"
    options = {p.name: p for p in _options(command)}
    assert set(options) == set(declarations) | OWN[command]  # none by hand beyond the command's own, none declared and lost
    assert not set(declarations) & OWN[command]
    for field, [(config, declared)] in declarations.items():
        param = options[field]
        assert set(param.opts) | set(param.secondary_opts) == _flags(declared), field
        assert param.help == declared.help, field
        assert param.default == command_default(config, field, declared), field


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_every_flag_the_hand_written_options_took_is_still_there(command):
    assert {f for p in _options(command) for f in (*p.opts, *p.secondary_opts)} == FLAGS_BEFORE[command]


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_help_lists_each_option_with_its_default(command, monkeypatch):
    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 1000)  # one line per option
    result = CliRunner().invoke(app, [command, "--help"], env={"NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for field, [(config, declared)] in _declarations(command).items():
        flag = declared.flags[0].split("/")[-1 if declared.flags[0].startswith(" ") else 0].strip()
        [line] = [line for line in lines if f" {flag} " in line and declared.help[:40] in line]
        shown = command_default(config, field, declared)
        default = field_default(config, field)
        if shown not in (None, ()):  # typer shows it
            assert "[default: " in line and (isinstance(shown, bool) or f"[default: {shown}]" in line), line
        elif default not in (None, ()):  # "not given" resolves to the field's default: the help text says which
            values = default if isinstance(default, tuple) else (default,)
            assert "default" in declared.help and all(str(v) in declared.help for v in values), (field, declared.help)


def _parsed(command: str, *argv: str) -> dict:
    with COMMANDS[command].make_context(command, list(argv)) as context:
        return dict(context.params)


def test_bench_flags_build_the_configs_the_hand_written_options_built():
    params = _parsed("bench", "m.onnx", "--backend", "onnxruntime", "--device", "cpu", "-b", "1", "-b", "8", "--warmup", "2", "--min-runs", "5",
                     "--rounds", "4", "--min-time", "0.5", "--threads", "2", "--data", "digits", "--seq-len", "32", "--no-baseline",
                     "--json", "r.json", "--markdown", "r.md", "--html", "r.html", "--plots", "p", "--baseline", "old.json",
                     "--max-regression", "0.2", "--max-accuracy-drop", "0.02", "--prompt-len", "16", "--new-tokens", "8",
                     "--perplexity-tokens", "0")
    assert config_from(BenchConfig, params, latency=config_from(LatencyConfig, params)) == BenchConfig(
        backends=("onnxruntime",), devices=("cpu",), batch_sizes=(1, 8), latency=LatencyConfig(warmup=2, min_runs=5, min_time=0.5, rounds=4),
        threads=2, data="digits", baseline=False, seq_len=32)
    assert config_from(GenerativeBenchConfig, params) == GenerativeBenchConfig(ttft_prompts=(16,), batch_sizes=(1, 8), new_tokens=8, threads=2,
                                                                               perplexity_tokens=0)
    assert config_from(ReportConfig, params) == ReportConfig("r.json", "r.md", "r.html", "p", "old.json", 0.2, 0.02)
    # without flags: the defaults the hand-written options had
    bare = _parsed("bench", "m.onnx")
    assert config_from(BenchConfig, bare, latency=config_from(LatencyConfig, bare)) == BenchConfig()
    assert BenchConfig().latency == LatencyConfig(warmup=10, min_runs=20, min_time=1.0, rounds=3) and BenchConfig().devices == ("cpu",)
    assert config_from(GenerativeBenchConfig, bare) == GenerativeBenchConfig() and GenerativeBenchConfig().batch_sizes == (1, 8)
    assert config_from(ReportConfig, bare) == ReportConfig(max_regression=0.10, max_accuracy_drop=0.01)


def test_generate_and_the_model_commands_build_what_they_built():
    sampled = _parsed("generate", "gpt", "-p", "hi", "-n", "5", "--temperature", "0.7", "--seed", "3", "--threads", "1", "--runtime", "openvino")
    assert config_from(GenerateConfig, sampled, greedy=False) == GenerateConfig(max_new_tokens=5, greedy=False, temperature=0.7, seed=3)
    assert config_from(GenerateRuntime, sampled) == GenerateRuntime(threads=1, runtime="openvino")
    bare = _parsed("generate", "gpt", "-p", "hi")
    assert (bare["greedy"], bare["temperature"]) == (True, None) and config_from(GenerateConfig, bare) == GenerateConfig(max_new_tokens=64)
    assert config_from(TrainOptions, _parsed("train", "cnn", "-d", "digits", "--epochs", "2", "--seed", "4")) == TrainOptions("digits", 2, 4, "cpu")
    assert dataclasses.asdict(config_from(TrainOptions, _parsed("train", "cnn"))) == {"dataset": None, "epochs": None, "seed": 0, "device": "cpu"}
    assert config_from(RunConfig, _parsed("run", "m.onnx", "-i", "x.npz", "-o", "y.npz", "--backend", "openvino", "--seq-len", "16")) == \
        RunConfig(backend="openvino", device="cpu", seq_len=16)
    assert config_from(CompareConfig, _parsed("compare", "a.pt", "b.onnx", "--data", "digits", "--input", "sr=16000", "--input", "k=2")) == \
        CompareConfig(data="digits", fixed_inputs=("sr=16000", "k=2"))
    assert config_from(InspectConfig, _parsed("inspect", "a.pt", "--kv-tokens", "256")) == InspectConfig(kv_tokens=256)
