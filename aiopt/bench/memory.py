"""Peak memory of one measurement: process RSS growth on CPU, CUDA peak allocated on GPU.

On Linux the process's RSS high-water mark (VmHWM) can be reset by writing 5 to
/proc/self/clear_refs, so each artifact's peak is its own, not the largest seen so far.
"""
from __future__ import annotations

from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


class PeakMemory:
    """Use as: tracker = PeakMemory(device); tracker.start(); ...load and run...; tracker.peak_bytes()."""

    def __init__(self, device: str = "cpu"):
        self.cuda = device.startswith("cuda")
        self._start_rss: int | None = None

    def start(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return
        try:
            _CLEAR_REFS.write_text("5")
            self._start_rss = _status_kib("VmRSS")
        except OSError:  # not Linux, or not allowed: no CPU peak figure
            self._start_rss = None

    def peak_bytes(self) -> int | None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            return int(torch.cuda.max_memory_allocated())
        if self._start_rss is None:
            return None
        peak = _status_kib("VmHWM")
        return None if peak is None else max(0, peak - self._start_rss) * 1024


def _status_kib(field: str) -> int | None:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None
