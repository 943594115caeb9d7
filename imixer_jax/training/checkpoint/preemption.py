"""Stop requests: SIGTERM (what clusters and TPU preemption send) and SIGINT (Ctrl-C) make the
trainer save a checkpoint at the next step and end normally.

* One process: Python handlers record the signal; the loop stops after the step in flight. A
  second Ctrl-C interrupts at once (the handler of SIGINT is back to Python's default then).
* Several processes: they must all save the same step. JAX's preemption service (started by
  ``jax.distributed.initialize``) catches SIGTERM and orbax's ``reached_preemption(step)``
  (``multihost_utils.reached_preemption_sync_point``) turns True on every process at the same
  step; a first Ctrl-C is turned into a SIGTERM to this process, so it takes the same path.
"""

from __future__ import annotations

import os
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
        if threading.current_thread() is not threading.main_thread():
            return self
        if jax.process_count() == 1:
            self._previous = {sig: signal.signal(sig, self._handle) for sig in _SIGNALS}
        else:  # SIGTERM stays with JAX's preemption service
            self._previous = {signal.SIGINT: signal.signal(signal.SIGINT, self._to_sigterm)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        self.signal = signal.Signals(signum).name
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def _to_sigterm(self, signum: int, frame) -> None:
        """Several processes: Ctrl-C becomes a preemption notice for all of them."""
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.kill(os.getpid(), signal.SIGTERM)

    def __call__(self, step: int) -> bool:
        """Whether to save and stop after ``step``; every process must call it at every step."""
        if self._reached_preemption(step):
            self.signal = self.signal or "preemption notice"
        return self.signal is not None
