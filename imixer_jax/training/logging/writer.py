"""Metric writers: JSON lines (``metrics.jsonl``) and TensorBoard event files in the workdir.

``metrics.jsonl`` stays a valid file whatever happens: each row is appended with one ``write``
and cut back if that fails (disk full), a row cut by a kill is dropped when the next run opens
the file, and rows of steps that a resumed run replays are dropped then too, so that every step
appears once.

TensorBoard gets the same guarantee the way TensorBoard supports: every run (first or resumed)
starts its event file with a ``SessionLog.START`` event at step ``resume_step + 1``. TensorBoard
reads event files in order and, at each START after the first, drops every point at that step or
later that it has read so far (``purge_orphaned_data``, on by default), so the points that a
killed run logged after its last checkpoint are replaced by the resumed run's, not doubled.

TensorBoard scalars are written with TensorFlow's core summary op (``tf.summary.write`` with the
'scalars' plugin metadata, what ``tf.summary.scalar`` writes): the ``tensorboard`` package, which
provides ``tf.summary.scalar``, is needed only to view the files, not to write them. TensorFlow is
imported when a writer is created, not when the trainer is imported.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Mapping

from imixer_jax.data import tf_import
from imixer_jax.training.errors import TrainingError
from imixer_jax.training.logging import reader as metrics
from imixer_jax.training.workdir import METRICS_FILE, open_for_writing


def _write_error(path: str, e: Exception) -> TrainingError:
    return TrainingError(
        f"writing {path} failed ({type(e).__name__}: {' '.join(str(e).split())[:200]}); the "
        f"file keeps its complete rows. Free disk space and rerun the same command to resume."
    )


def _keep_rows_through(path: str, step: int) -> None:
    """Rewrite ``path`` (atomically) without rows after ``step`` and without a cut last row."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        text = f.read()
    rows = metrics.read_jsonl(path)
    kept = [row for row in rows if row["step"] <= step]
    if len(kept) == len(rows) and (not text or text.endswith("\n")):
        return
    with os.fdopen(open_for_writing(path + ".tmp"), "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in kept)
    os.replace(path + ".tmp", path)


class MetricWriter:
    """Appends ``{"step": step, key: value, ...}`` to ``DIR/metrics.jsonl`` and the same scalars
    to TensorBoard events under ``DIR/tensorboard``. Inactive (writes nothing) when ``enabled`` is
    False, e.g. on every process but the first.

    ``resume_step``: the step the run starts from; rows after it (written by an earlier run that
    got further than its last checkpoint) are dropped, since this run writes them again, and
    TensorBoard is told to drop its points after it too.

    Raises (``write``): TrainingError with one line when a file cannot be written.
    """

    def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int = 0):
        self.enabled = enabled
        if not enabled:
            return
        # Lazy: importing the trainer (or a config) must not import TensorFlow.
        tf = tf_import.import_tensorflow()
        from tensorflow.core.framework import summary_pb2  # noqa: PLC0415

        self._tf = tf
        self._scalar, self._text = (
            summary_pb2.SummaryMetadata(
                plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=name)
            )
            for name in ("scalars", "text")
        )
        self.path = os.path.join(workdir, METRICS_FILE)
        try:
            os.makedirs(workdir, exist_ok=True)
            _keep_rows_through(self.path, resume_step)
            self._fd = open_for_writing(self.path, os.O_APPEND)
        except OSError as e:
            raise _write_error(self.path, e) from e
        self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))
        self._start_session(resume_step + 1)

    def _start_session(self, step: int) -> None:
        """``SessionLog.START`` at ``step``: TensorBoard purges the points at ``step`` and later
        that earlier runs wrote (see the module docstring)."""
        from tensorflow.core.util import event_pb2  # noqa: PLC0415
        from tensorflow.python.ops import summary_ops_v2  # noqa: PLC0415 (no public API)

        start = event_pb2.Event(
            wall_time=time.time(),
            step=step,
            session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START),
        )
        with self._events() as tf:
            summary_ops_v2.import_event(tf.constant(start.SerializeToString()))

    @contextlib.contextmanager
    def _events(self):
        """Writes to the event file in the block (yields ``tf``), then flushes it."""
        tf = self._tf
        try:
            with self._tb.as_default():
                yield tf
            self._tb.flush()
        except tf.errors.OpError as e:
            raise _write_error(os.path.join(os.path.dirname(self.path), "tensorboard"), e) from e

    def final(self, step: int) -> dict[str, float] | None:
        """The test metrics logged at ``step`` with the last ``train/loss`` logged, or None if
        ``metrics.jsonl`` holds no test metrics of ``step``; ``{}`` when not ``enabled`` (only
        the first process reads the file)."""
        if not self.enabled:
            return {}
        rows = metrics.read_jsonl(self.path)
        tests = [r for r in rows if r["step"] == step and "test/top1" in r]
        if not tests:
            return None
        final = {k: v for k, v in tests[-1].items() if k.startswith("test")}
        losses = [r["train/loss"] for r in rows if "train/loss" in r]
        return {**final, "train/loss": losses[-1]} if losses else final

    def _append(self, line: bytes) -> None:
        end = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            written = 0
            while written < len(line):
                written += os.write(self._fd, line[written:])
        except OSError as e:
            os.ftruncate(self._fd, end)  # shrinking a file needs no space
            raise _write_error(self.path, e) from e

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        """Record ``scalars`` (keys like 'train/loss', 'test/top1') at ``step``."""
        if not self.enabled:
            return
        row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        # JSON has no NaN/Inf: write them as strings so that the file stays strict JSON.
        row = {k: v if isinstance(v, int) or math.isfinite(v) else str(v) for k, v in row.items()}
        self._append((json.dumps(row) + "\n").encode())
        with self._events() as tf:
            for key, value in scalars.items():
                value = tf.constant(float(value))
                tf.summary.write(key, value, step=int(step), metadata=self._scalar)

    def write_text(self, tag: str, text: str, step: int) -> None:
        """A text summary in TensorBoard's text tab, e.g. the run's config (its
        hyperparameters) as Markdown code at the first step it trains (``resume_step + 1``,
        which the session start does not purge)."""
        if not self.enabled:
            return
        markdown = "\n".join("    " + line for line in text.splitlines())
        with self._events() as tf:
            tf.summary.write(tag, tf.constant(markdown), step=step, metadata=self._text)

    def close(self) -> None:
        if self.enabled:
            os.close(self._fd)
            self._tb.close()
