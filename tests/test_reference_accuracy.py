"""The README's accuracy figures: base models, default recipe, seed 0, on the test split
(docs/models.md's table).

The CNNs and the LSTM train their default recipe here (about 1.5 minutes on 2 quiet cores; slow,
so in every whole-suite run). The Transformer's default recipe is 120 epochs, about 3.5 minutes
alone: its figure (96.1%, target 95%) is asserted only when asked for,
`python -m pytest -m reference tests/test_reference_accuracy.py` (pyproject's addopts deselect
the `reference` marker otherwise); run it before a figure in docs/models.md changes. The whole
suite checks its recipe's short form instead: 30 epochs (the same schedule compressed) reach
89.1% here (2026-12-06), asserted >= 88%.
"""
import pytest

from aiopt.reference_models.train import train_reference_model

TARGETS = [
    ("cnn", "mnist1d", None, 0.98),
    ("lstm", "mnist1d", None, 0.94),
    ("cnn", "digits", None, 0.98),
    pytest.param("transformer", "mnist1d", 30, 0.88, id="transformer-mnist1d-30-epochs"),
    pytest.param("transformer", "mnist1d", None, 0.95, id="transformer-mnist1d", marks=pytest.mark.reference),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, dataset, epochs, target", TARGETS,
                         ids=[f"{t[0]}-{t[1]}" if isinstance(t, tuple) else None for t in TARGETS])
def test_base_model_reaches_target(tmp_path, name, dataset, epochs, target):
    result = train_reference_model(name, str(tmp_path / "m.pt"), dataset=dataset, seed=0, epochs=epochs)
    assert result.accuracy >= target, f"{name} on {dataset} ({epochs or 'default'} epochs): {result.accuracy:.4f} < {target}"
