"""Quantize's latency timing, shortened for tests.

Quantize's choice by measurement times every candidate (select.QUICK: 0.25 s each per batch
size), then its finalists (select.CONFIRM: 1 s each per batch size), all again when a figure
comes out unsteady; `aiopt optimize` runs that choice in every trial's quantize step. In the
tests that use it, most of the time went to these timing loops, which serve the user's decision,
not what the test asserts (what was built, judged, chosen by its own figures and written, and
how processes, studies and interrupts behave). Those tests time each candidate briefly instead:
every candidate is still built, judged and timed in interleaved rounds by the same code. No test
that uses this asserts which recipe is fastest on this machine.

In this process: the `brief_timing` fixture (tests/conftest.py). In a fresh process:
`python tests/brief_timing.py ARGS...` is `python -m aiopt ARGS...` with the timing shortened
(the real entry point, its signal handling and exit codes included).
"""
from __future__ import annotations

BRIEF_QUICK = {"warmup": 1, "min_runs": 4, "min_time": 0.02, "rounds": 2}
BRIEF_CONFIRM = {"warmup": 2, "min_runs": 6, "min_time": 0.06, "rounds": 2}


def shorten(setattr=setattr) -> None:
    """Shorten quantize's timing; `setattr` may be pytest's monkeypatch.setattr (undone after the test)."""
    from aiopt.measure.latency import LatencyConfig
    from aiopt.quantize import select

    # QUICK is measure_speed's default argument: a changed signature must fail here, loudly
    assert select.measure_speed.__defaults__ == (select.QUICK,), "quantize.select.measure_speed's signature changed: update tests/brief_timing.py"
    setattr(select.measure_speed, "__defaults__", (LatencyConfig(**BRIEF_QUICK),))
    setattr(select, "CONFIRM", LatencyConfig(**BRIEF_CONFIRM))


if __name__ == "__main__":
    import runpy

    shorten()
    runpy.run_module("aiopt", run_name="__main__", alter_sys=True)
