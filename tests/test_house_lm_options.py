"""`aiopt quantize`'s causal-LM options (the quality floor and the timing) are declared once, on
LMQuantizeConfig's fields: the command's flags, defaults and help come from there, and the values
given reach the config the causal-LM path builds."""
from __future__ import annotations

import typer

from aiopt.cli import app
from aiopt.llm.quantize import LMQuantizeConfig
from aiopt.options import command_default, declared_options

COMMAND = typer.main.get_command(app).commands["quantize"]
DECLARED = declared_options(LMQuantizeConfig)


def test_the_causal_lm_flags_come_from_the_config_fields():
    assert set(DECLARED) == {"max_perplexity_increase", "min_agreement", "eval_tokens", "prompt_len", "new_tokens", "route"}
    for field, declared in DECLARED.items():
        params = [p for p in COMMAND.params if p.name == field]
        assert len(params) == 1, field
        assert ("/".join(params[0].opts + params[0].secondary_opts),) == declared.flags and params[0].help == declared.help
        assert params[0].default == command_default(LMQuantizeConfig, field, declared) == getattr(LMQuantizeConfig(), field)


def test_the_values_given_reach_the_command():
    with COMMAND.make_context("quantize", ["folder", "--max-perplexity-increase", "0.05", "--min-agreement", "0.8", "--prompt-len", "64",
                                           "--new-tokens", "8", "--eval-tokens", "1024", "--no-route"]) as context:
        params = context.params
    assert (params["max_perplexity_increase"], params["min_agreement"], params["prompt_len"], params["new_tokens"], params["eval_tokens"]) == \
        (0.05, 0.8, 64, 8, 1024)
    assert params["route"] is False
