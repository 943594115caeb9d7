"""Throughput, data wait and ETA of the training loop, with compilation and evaluation left out.

The first step after a (re)start compiles the train step: the loop blocks on its result and the
clock starts after it, so that the rate and the ETA describe steady-state steps only. Time spent
waiting for the input pipeline (``next(batches)`` and the host-to-device copy) is measured apart:
``data_wait_s`` of ``step_time_s``. Checkpoint saves (the device-to-host copy and any wait for the
previous save) are left out too (``exclude``).
"""

from __future__ import annotations

import time


class Progress:
    """Host timing of the steps since the last ``report``; ``total``: the run's last step."""

    def __init__(self, total: int, batch_size: int):
        self.total, self.batch_size = total, batch_size
        self.restart()

    def restart(self) -> None:
        """Start a new window now (after compilation, an evaluation or a report)."""
        self._start, self._steps, self._data_wait = time.time(), 0, 0.0

    def data_wait(self, seconds: float) -> None:
        """Add one step's wait for its batch."""
        self._data_wait += seconds

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` of the current window out of the step time (a checkpoint save)."""
        self._start += seconds

    def step(self) -> None:
        """Count one timed step."""
        self._steps += 1

    def report(self, step: int) -> dict[str, float]:
        """``train/{images_per_s, step_time_s, data_wait_s, eta_s}`` (per-step means over the
        window; empty if it timed no step, e.g. the log of the compiling step), and restart."""
        seconds, steps, wait = time.time() - self._start, self._steps, self._data_wait
        self.restart()
        if not steps:
            return {}
        step_time = seconds / steps
        return {
            "train/images_per_s": self.batch_size / step_time,
            "train/step_time_s": step_time,
            "train/data_wait_s": wait / steps,
            "train/eta_s": (self.total - step) * step_time,
        }
