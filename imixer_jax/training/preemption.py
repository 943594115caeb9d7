"""Stop requests: SIGTERM (what clusters and TPU preemption send) and SIGINT (Ctrl-C) make the
trainer save a checkpoint at the next step and end normally.

* One process: Python handlers record the signal; the loop stops after the step in flight. A
  second Ctrl-C interrupts at once (the handler of SIGINT is back to Python's default then).
* Several processes: they must all save the same step, so no Python handler is installed; JAX's
  preemption service (started by ``jax.distributed.initialize``) catches SIGTERM and orbax's
  ``reached_preemption(step)`` (``multihost_utils.reached_preemption_sync_point``) turns True on
  every process at the same step.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

import jax

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Context manager holding the signal handlers of one training loop."""

    def __init__(self, reached_preemption: Callable[[int], bool]):
        self.signal: str | None = None  # name of the signal received
        self._reached_preemption = reached_preemption
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in _SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        self.signal = signal.Signals(signum).name
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __call__(self, step: int) -> bool:
        """Whether to save and stop after ``step``; every process must call it at every step."""
        if self._reached_preemption(step):
            self.signal = self.signal or "preemption notice"
        return self.signal is not None
