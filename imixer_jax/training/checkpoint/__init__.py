"""Checkpoints of a run: the orbax manager with per-array integrity hashes (``manager``), the
workdir lock (``lock``), preemption requests (``preemption``) and the filter that keeps orbax's and
TensorStore's echoes of a failed save or restore out of the one-line errors (``log_filter``)."""

from imixer_jax.training.checkpoint.manager import (
    DAMAGED_DIR,
    Checkpointer,
    CheckpointError,
    DamagedCheckpointError,
)

__all__ = ["DAMAGED_DIR", "CheckpointError", "Checkpointer", "DamagedCheckpointError"]
