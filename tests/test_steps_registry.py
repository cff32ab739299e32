"""The step registry (aiopt.steps): every transform is registered with a frozen config and a
frozen typed result whose to_dict() round-trips; each option is declared once, and the command
line, the config defaults and the reproduce command's flags agree for every step."""
from __future__ import annotations

import dataclasses
import json

import pytest
import typer

from aiopt.cli import app
from aiopt.cli.options import config_of
from aiopt.options import command_default
from aiopt.steps import STEPS, StepResult, command_line, flags_for, run_step

TRANSFORMS = {"export", "export-tensorrt", "export-torch-tensorrt", "export-torch-cuda", "quantize", "prune", "distill", "deploy"}
COMMANDS = typer.main.get_command(app).commands


def _frozen(cls) -> bool:
    return dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen


def test_every_transform_is_a_registered_step_with_frozen_config_and_typed_result():
    assert set(STEPS) == TRANSFORMS
    for step in STEPS.values():
        assert _frozen(step.config_class), step.name
        assert issubclass(step.result_class, StepResult) and _frozen(step.result_class), step.name
        assert step.options, f"{step.name} declares no option"
        assert (step.command or (step.name,))[0] in COMMANDS, step.name


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_result_to_dict_round_trips(name):
    cls = STEPS[name].result_class
    typed = [f for f in dataclasses.fields(cls) if f.name != "document"]
    document = {f.metadata.get("key", f.name): f"value of {f.name}" for f in typed}
    document["only_in_the_report"] = {"nested": [1, 2]}  # keys without a typed field travel too
    result = cls.from_dict(document)
    assert result.to_dict() == document and list(result.to_dict()) == list(document)  # the --json output, keys in order
    assert cls.from_dict(result.to_dict()) == result
    assert all(getattr(result, f.name) == f"value of {f.name}" for f in typed)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.path = "elsewhere"


def _param(command, flag: str):
    """The click parameter of `command` that takes `flag` (a bool's "--on/--off" by its first half)."""
    first = flag.split("/")[0]
    found = [p for p in command.params if first in p.opts]
    assert len(found) == 1, f"{command.name} has no option {first}"
    return found[0]


def _same(cli_value, declared_value) -> bool:
    return (tuple(cli_value) if isinstance(cli_value, list) else cli_value) == declared_value


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_cli_options_config_defaults_and_reproduce_flags_agree(name):
    step = STEPS[name]
    command = COMMANDS[(step.command or (name,))[0]]
    shared = {}  # a flag two steps of one command share (export's --precision): one declares its help
    for other in STEPS.values():
        if other is not step and (other.command or (other.name,))[0] == command.name:
            shared.update({d.flags[0]: d for d in other.options.values()})
    for field, declared in step.options.items():
        param = _param(command, declared.flags[0])
        assert _same(param.default, command_default(step.config_class, field, declared)), (name, field, param.default)
        assert param.help == declared.help or declared.flags[0] in shared, (name, field)
        assert all(flag in param.opts + param.secondary_opts for part in declared.flags for flag in part.split("/")), (name, field)
        assert step.flags[field] == declared.written
    assert set(step.flags) == set(step.options)


def _changed(field: dataclasses.Field, default):
    """A value of the field's type other than its default."""
    kind = str(field.type)
    if "bool" in kind:
        return not default
    if "tuple[int" in kind:
        return (3, 5)
    if "tuple[str" in kind:
        return ("a=1", "b=2")
    if kind.startswith("int"):
        return (default or 0) + 3
    if kind.startswith("float"):
        return 0.25 if default != 0.25 else 0.75
    return "changed"


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_a_reproduce_command_parses_back_to_the_same_config(name):
    """The flags `aiopt optimize` writes into reproduce.sh for a config, read by the command
    line, build that config again: for every option at once, and for each one alone."""
    step = STEPS[name]
    defaults = {f.name: command_default(step.config_class, f.name, step.options[f.name])
                for f in dataclasses.fields(step.config_class) if f.name in step.options}
    fields = {f.name: f for f in dataclasses.fields(step.config_class)}
    every = {n: _changed(fields[n], fields[n].default) for n in defaults}
    for changes in [every, *({n: v} for n, v in every.items())]:
        config = dataclasses.replace(step.config_class(), **changes)
        argv = command_line(name, "model.pt", "out.x", flags_for(step, config)).split()[1:]
        command = COMMANDS[argv[0]]
        with command.make_context(argv[0], argv[1:]) as context:
            overrides = {"fit_batch_sizes": False} if name == "quantize" else {}  # a reproduce line always names -b
            assert config_of(name, context.params, **overrides) == dataclasses.replace(config, **overrides), (name, changes)


def test_typed_results_of_real_steps(tiny_cnn, tmp_path):
    """export then deploy through the registry: typed fields, the JSON document, the lineage, the command."""
    from aiopt.export.onnx import OnnxExportConfig
    from aiopt.export.triton import TritonConfig

    exported = run_step("export", tiny_cnn, tmp_path / "cnn.onnx", OnnxExportConfig(opset=17))
    result = exported.result
    assert result.path == str(tmp_path / "cnn.onnx") and result.opset == 17 and result.nodes_simplified <= result.nodes_exported
    assert result.to_dict()["validation"] == result.validation and json.loads(json.dumps(exported.to_dict()))["args"] == ["--opset", "17"]
    assert exported.lineage["step"] == "export" and exported.command().endswith(f"--opset 17 -o {tmp_path / 'cnn.onnx'}")
    deployed = run_step("deploy", result.path, tmp_path / "repo", TritonConfig(max_batch=8))
    assert deployed.result.max_batch_size == 8 and deployed.result.platform == "onnxruntime_onnx"
    assert deployed.path == str(tmp_path / "repo") and deployed.result.file == str(tmp_path / "repo" / "cnn" / "1" / "model.onnx")
    assert deployed.command() == f"aiopt deploy {result.path} --max-batch 8 --triton {deployed.path}"
