"""Measuring the sandbox's limits without reading the wall clock."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

MIB = 1024 * 1024


class CountingClock:
    """A monotonic clock that moves ``step`` seconds each time it is read: the sandbox reads it on
    every deadline check, so a time limit becomes a number of checks."""

    def __init__(self, step: float = 0.001) -> None:
        self.step = step
        self.now = 1000.0
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        self.now += self.step
        return self.now


def traced_peak(func: Callable[[], Any]) -> tuple[BaseException | None, int]:
    """Run ``func`` under tracemalloc: the exception it raised (None if it returned) and the peak
    of memory allocated while it ran, in bytes."""
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    baseline = tracemalloc.get_traced_memory()[0]
    error: BaseException | None = None
    try:
        func()
    except Exception as exc:
        error = exc
    peak = tracemalloc.get_traced_memory()[1] - baseline
    if not was_tracing:
        tracemalloc.stop()
    return error, peak
