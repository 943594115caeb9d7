"""The metrics file of a run, ``DIR/metrics.jsonl``: one JSON object per line,
``{"step": int, "train/loss": float, ...}`` (non-finite values as the strings "nan", "inf").
The trainer writes it (``imixer_jax.training.writers``); sweeps and reports read it."""

from __future__ import annotations

import json


def read_jsonl(path: str) -> list[dict]:
    """The rows of a ``metrics.jsonl`` file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
