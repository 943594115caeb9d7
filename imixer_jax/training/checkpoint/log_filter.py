"""What orbax and TensorStore print besides the trainer's own lines, cut to what a user needs
(installed by the entry points unless ``--verbose``; see ``quiet_orbax_logging``).

A checkpoint that fails to save or restore is reported by
``imixer_jax.training.checkpoint.manager`` as one
line; orbax and TensorStore report the same failure from their own threads (a dozen lines with
the whole TensorStore spec, some printed after the trainer's line). Those echoes are dropped here;
errors that the trainer does not report are delayed to its next save or wait, never hidden.
"""

from __future__ import annotations

import contextlib
import logging as py_logging
import sys
import traceback
from collections.abc import Iterator

from absl import logging

__all__ = ["ORBAX_ERRORS", "quiet_orbax_logging", "without_read_only_note"]


_ORBAX_TMP = ".orbax-checkpoint-tmp"  # orbax writes a checkpoint under <step>.orbax-checkpoint-tmp


def _in_orbax(path: str) -> bool:
    """Whether source file ``path`` is part of orbax (where a log record or a frame comes from)."""
    return "/orbax/" in path


class _DropOrbaxInfo(py_logging.Filter):
    """orbax's INFO lines dropped; its errors held back.

    A failed background save (e.g. disk full) is logged by each of orbax's threads, with the
    TensorStore spec, some of them after the trainer has already raised the same error as one
    line (``Checkpointer``). So orbax's errors are held here, cut to one line each: the
    ``Checkpointer`` drops them when it reports the failure itself (``report`` for a save,
    ``discard`` for a restore), and logs them as warnings at its next successful ``wait`` /
    ``save`` otherwise (``release``): an error that it does not report is delayed, not hidden.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reset()

    def reset(self) -> None:
        """A new run: nothing held or reported yet."""
        self.held: list[str] = []
        self.reported = False  # a save failure was reported: orbax's echoes of it are dropped

    def filter(self, record: py_logging.LogRecord) -> bool:
        if not _in_orbax(record.pathname):
            return True
        if record.levelno >= py_logging.ERROR:
            if not self.reported:
                self.held.append(" ".join(record.getMessage().split())[:300])
            return False
        return record.levelno >= py_logging.WARNING

    def report(self) -> None:
        """A failed save was reported (the run ends): drop what is held and what comes."""
        self.held, self.reported = [], True

    def discard(self) -> None:
        """A failed restore was reported: drop what is held."""
        self.held = []

    def release(self) -> None:
        """Nothing reported them: log the held errors as warnings, one line each."""
        held, self.held = self.held, []
        for message in held:
            logging.warning("orbax: %s", message)


class _DropOrphanedOrbaxFutures(py_logging.Filter):
    """asyncio's 'Task exception was never retrieved' / '_GatheringFuture exception was never
    retrieved' (the whole TensorStore spec, ~60 lines each) for orbax's own futures. orbax leaves
    the failed reads of a damaged checkpoint, and the gathered writes of a failed save, as futures
    whose errors asyncio logs when they are collected, at a time set by the garbage collector; the
    restore or save has already raised the same error, reported as one line. Only futures whose
    error was raised through orbax's code, or (a TensorStore write's future, set from C++ with no
    Python traceback) names a file inside an orbax checkpoint's temporary directory, are dropped;
    any other orphaned future is still logged.
    """

    def filter(self, record: py_logging.LogRecord) -> bool:
        if not record.getMessage().split("\n", 1)[0].endswith(" exception was never retrieved"):
            return True
        error, tb = record.exc_info[1:] if record.exc_info else (None, None)
        if _ORBAX_TMP in str(error):
            return False
        return not any(_in_orbax(f.f_code.co_filename) for f, _ in traceback.walk_tb(tb))


class _DropClosedLoopCallbacks:
    """``sys.unraisablehook`` for two echoes of a failed save or restore:

    * When a save fails, orbax closes the asyncio loop of the save while TensorStore writes of it
      are still running; each that completes later calls ``loop.call_soon_threadsafe`` on the
      closed loop from a TensorStore thread, and TensorStore reports the
      ``RuntimeError('Event loop is closed')`` as unraisable (``PyErr_WriteUnraisable`` without
      an object: a bare 6-line traceback).
    * When a restore fails (a damaged checkpoint), orbax abandons the reads still in flight; each
      coroutine (``_read_array_index_and_device_put``) turns the ``GeneratorExit`` of its
      collection into an ``Exception`` naming the whole TensorStore spec, which Python reports
      as 'Exception ignored in: <coroutine object ...>' (dozens of lines per array).

    Exactly those are dropped (the failure itself is reported as one line); every other
    unraisable exception goes to the previous hook."""

    def __init__(self) -> None:
        self.previous = sys.unraisablehook

    def __call__(self, unraisable) -> None:
        exc, obj = unraisable.exc_value, unraisable.object
        closed_loop = isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"
        if obj is None and closed_loop:
            return
        code = getattr(obj, "cr_code", None)  # a coroutine's
        if code is not None and _in_orbax(code.co_filename) and isinstance(exc, Exception):
            return
        self.previous(unraisable)


class _DropReadOnlyNote(py_logging.Filter):
    """orbax's 'Given directory is read only=DIR' warning."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        return not _in_orbax(record.pathname) or "is read only" not in record.getMessage()


@contextlib.contextmanager
def without_read_only_note() -> Iterator[None]:
    """orbax warns 'Given directory is read only=DIR' whenever it opens a checkpoint directory
    read-only, which evaluation and inspection (``analysis.load_run``, a notebook) do on
    purpose; that one line is dropped from the absl log inside the block, whatever started the
    process (an entry point, a notebook, a script)."""
    logger, note = py_logging.getLogger("absl"), _DropReadOnlyNote()
    logger.addFilter(note)
    try:
        yield
    finally:
        logger.removeFilter(note)


ORBAX_ERRORS, _FUTURE_FILTER = _DropOrbaxInfo(), _DropOrphanedOrbaxFutures()


def quiet_orbax_logging() -> None:
    """Drop orbax's INFO lines (a dozen per save) from the absl log, asyncio's echoes of a
    failed restore or save and TensorStore's echoes of a failed save on a closed loop;
    orbax's errors are held back (``_DropOrbaxInfo``), its other warnings stay."""
    py_logging.getLogger("absl").addFilter(ORBAX_ERRORS)  # adding it twice is a no-op
    py_logging.getLogger("asyncio").addFilter(_FUTURE_FILTER)
    if not isinstance(sys.unraisablehook, _DropClosedLoopCallbacks):
        sys.unraisablehook = _DropClosedLoopCallbacks()
