"""Exceptions of the trainer; each message is one line that names the cause and the fix."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite values, a failed save); the message is one line."""
