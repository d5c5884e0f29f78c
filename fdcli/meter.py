"""Wall time and peak resident memory of named stages of one process."""

from __future__ import annotations

import contextlib
import resource
import sys
import threading
import time
from pathlib import Path


def current_rss_mb() -> float | None:
    """This process's resident set now (Linux ``/proc``), in MiB; None elsewhere."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * resource.getpagesize() / 2**20


def max_rss_mb() -> float:
    """The process's peak resident set so far (``getrusage``), in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


class StageMeter:
    """``with meter.stage("name"):`` records the stage's wall seconds and its peak RSS,
    sampled every ``interval`` seconds by a background thread (where ``/proc`` is missing,
    the process peak so far at the stage's end)."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.stages: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def stage(self, name: str):
        peak = [current_rss_mb() or 0.0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(self.interval):
                peak[0] = max(peak[0], current_rss_mb() or 0.0)

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        start = time.perf_counter()
        try:
            yield
        finally:
            done.set()
            watcher.join()
            now = current_rss_mb()
            top = max(peak[0], now) if now is not None else max_rss_mb()
            self.stages[name] = {"wall_s": round(time.perf_counter() - start, 2),
                                 "peak_rss_mb": round(top, 1)}

    def summary(self) -> dict[str, dict[str, float]]:
        total = sum(s["wall_s"] for s in self.stages.values())
        return {**self.stages, "total": {"wall_s": round(total, 2),
                                         "peak_rss_mb": round(max_rss_mb(), 1)}}
