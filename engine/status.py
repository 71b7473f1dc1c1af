"""A run's live status, `progress.json` in the run directory, for whoever watches the run from outside.

`bot demo` and `bot reproduce` run every stage in a process of its own, with its output in a log file; they show
what each run is doing (compare/live.py) by reading this file. The training loop rewrites it atomically at most
every `min_interval` seconds and at every change of phase (epoch start, evaluation, end), so it costs nothing per
step. Rank 0 only (a disabled RunDir writes nothing).

Fields: `task`, `phase` (train | evaluate | done), `epoch` (1-based, the one in progress), `epochs`, `batch` and
`batches` (within the epoch), `step`, `steps` (the whole run), `images_per_second` (this process's training rate),
`eta_seconds` (the steps left at the rate measured since this process started; evaluation not included), `loss`
(the last one read back), `metrics` (the last evaluation's), `updated` (Unix time).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from .rundir import atomic_write_text

STATUS_FILE = "progress.json"


class StatusFile:
    def __init__(self, folder: Path, enabled: bool = True, *, task: str = "", epochs: int = 0, batches: int = 0,
                 min_interval: float = 2.0, clock=time.monotonic):
        self.path = Path(folder) / STATUS_FILE
        self.enabled, self.min_interval, self.clock = enabled, min_interval, clock
        self.state = {"task": task, "phase": "train", "epoch": 0, "epochs": epochs, "batch": 0, "batches": batches,
                      "step": 0, "steps": epochs * batches, "images_per_second": 0.0, "eta_seconds": None,
                      "loss": None, "metrics": {}}
        self.last_write = float("-inf")
        self.first_step: tuple[float, int] | None = None  # (time, step) this process started stepping at

    def update(self, *, force: bool = False, **fields) -> None:
        """Merge `fields`; write when `force` (a phase change) or when `min_interval` has passed since the last write."""
        if not self.enabled:
            return
        self.state.update(fields)
        now = self.clock()
        if "step" in fields:
            if self.first_step is None:
                self.first_step = (now, fields["step"])
            self.state["eta_seconds"] = self._eta(now)
        if force or now - self.last_write >= self.min_interval:
            self.last_write = now
            # no fsync: a status a crash loses is rewritten by the next update; fsync per second would load shared storage
            atomic_write_text(self.path, json.dumps({**self.state, "updated": time.time()}, default=float) + "\n",
                              fsync=False)

    def _eta(self, now: float) -> float | None:
        t0, s0 = self.first_step
        done = self.state["step"] - s0
        if done <= 0 or now <= t0:
            return None
        return max(0.0, (self.state["steps"] - self.state["step"]) * (now - t0) / done)


def read_status(folder: Path) -> dict | None:
    """The status a run last wrote, or None when it wrote none (not started, or an older bot) or it is unreadable."""
    try:
        data = json.loads((Path(folder) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
