"""Seconds per named stage of one request on one rank, without stalling the device while it runs.

On CUDA a span records two events on the current stream and is read once, at the end
(`totals()` synchronises once): the GPU time of the work queued inside the span. `host_span` times
host work (reading files, waiting for frames) with the wall clock. On the CPU both are wall time.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

import torch


class StageTimer:
    """Accumulates `{name: seconds}` for one request."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.is_cuda = torch.device(device).type == "cuda"
        self._host: dict[str, float] = defaultdict(float)
        self._events: list[tuple[str, object, object]] = []

    @contextmanager
    def span(self, name: str) -> Iterator[None]:
        """GPU time of the work queued inside (wall time on the CPU)."""
        if not self.is_cuda:
            with self.host_span(name):
                yield
            return
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        try:
            yield
        finally:
            end.record()
            self._events.append((name, start, end))

    @contextmanager
    def host_span(self, name: str) -> Iterator[None]:
        """Wall time of the host work inside."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self._host[name] += time.perf_counter() - start

    def add(self, name: str, seconds: float) -> None:
        self._host[name] += seconds

    def totals(self) -> dict[str, float]:
        """Every stage's seconds (synchronises once on CUDA)."""
        totals = dict(self._host)
        if self._events:
            self._events[-1][2].synchronize()
            for name, start, end in self._events:
                totals[name] = totals.get(name, 0.0) + start.elapsed_time(end) / 1000.0
        return totals
