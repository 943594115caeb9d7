"""Metric writers: JSON lines (``metrics.jsonl``) and TensorBoard event files in the workdir.

TensorBoard scalars are written with TensorFlow's core summary op (``tf.summary.write`` with the
'scalars' plugin metadata, what ``tf.summary.scalar`` writes): the ``tensorboard`` package, which
provides ``tf.summary.scalar``, is needed only to view the files, not to write them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

import tensorflow as tf
from tensorflow.core.framework import summary_pb2

_SCALAR = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
)


class MetricWriter:
    """Appends ``{"step": step, key: value, ...}`` to ``DIR/metrics.jsonl`` and the same scalars
    to TensorBoard events under ``DIR/tensorboard``. Inactive (writes nothing) when ``enabled`` is
    False, e.g. on every process but the first."""

    def __init__(self, workdir: str, *, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
        self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        """Record ``scalars`` (keys like 'train/loss', 'test/top1') at ``step``."""
        if not self.enabled:
            return
        row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        # JSON has no NaN/Inf: write them as strings so that the file stays strict JSON.
        row = {k: v if isinstance(v, int) or math.isfinite(v) else str(v) for k, v in row.items()}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        with self._tb.as_default():
            for key, value in scalars.items():
                tf.summary.write(key, tf.constant(float(value)), step=int(step), metadata=_SCALAR)
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
