"""The README's accuracy figures: base models, default recipe, seed 0, on the test split.

Slow (about 6 minutes on 2 cores) but the claim the product makes; CI runs it.
Deselect locally with `-m "not slow"`.
"""
import pytest

from aiopt.reference_models.train import train_reference_model

TARGETS = [
    ("cnn", "mnist1d", 0.98),
    ("lstm", "mnist1d", 0.94),
    ("transformer", "mnist1d", 0.95),
    ("cnn", "digits", 0.98),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, dataset, target", TARGETS, ids=[f"{n}-{d}" for n, d, _ in TARGETS])
def test_base_model_reaches_target(tmp_path, name, dataset, target):
    result = train_reference_model(name, str(tmp_path / "m.pt"), dataset=dataset, seed=0)
    assert result.accuracy >= target, f"{name} on {dataset}: {result.accuracy:.4f} < {target}"
