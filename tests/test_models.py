import pytest
import torch

from aiopt.errors import InputError
from aiopt.reference_models import build_model, config_to_dict, make_config, model_names, parse_model_name


def test_parse_model_name_defaults_to_base():
    assert parse_model_name("cnn") == ("cnn", "base")
    assert parse_model_name("lstm:tiny") == ("lstm", "tiny")


def test_unknown_model_lists_known_ones():
    with pytest.raises(InputError, match="known models: cnn, lstm, transformer"):
        parse_model_name("resnet")
    with pytest.raises(InputError, match="known sizes: tiny, base"):
        parse_model_name("cnn:huge")


@pytest.mark.parametrize("name", model_names())
@pytest.mark.parametrize("sample_shape", [(40,), (8, 8)], ids=["mnist1d", "digits"])
def test_every_model_builds_and_runs_on_both_datasets(name, sample_shape):
    for size in ("tiny", "base"):
        config = make_config(f"{name}:{size}", sample_shape, 10)
        model = build_model(name, config).eval()
        logits = model(torch.randn(3, *sample_shape))
        assert logits.shape == (3, 10)
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", model_names())
def test_config_round_trips_through_json_form(name):
    config = make_config(name, (40,), 10)
    rebuilt = build_model(name, config_to_dict(config))
    original = build_model(name, config)
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in original.parameters())
    assert rebuilt.config == config


def test_tiny_is_much_smaller_than_base():
    for name in model_names():
        tiny = build_model(name, make_config(f"{name}:tiny", (40,), 10))
        base = build_model(name, make_config(name, (40,), 10))
        assert sum(p.numel() for p in tiny.parameters()) * 4 < sum(p.numel() for p in base.parameters())


def test_unknown_config_field_is_refused():
    with pytest.raises(InputError, match="unknown fields"):
        build_model("cnn", {"input_shape": [40], "wings": 2})
