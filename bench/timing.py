"""The one timing helper the benchmark scripts share (run them from the repository root)."""

from __future__ import annotations

import time
from collections.abc import Callable


def alternate(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Each run's best wall time in seconds over `repeats` rounds that take turns (one warm-up
    each first), so a burst of load from elsewhere hits both sides of a comparison alike."""
    for run in runs.values():
        run()
    best = {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of `repeats` calls, in seconds, after one warm-up call."""
    return alternate({"run": fn}, repeats)["run"]
