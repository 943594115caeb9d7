"""The metrics file of a run, ``DIR/metrics.jsonl``: one JSON object per line,
``{"step": int, "train/loss": float, ...}`` (non-finite values as the strings "nan", "inf").
The trainer writes it (``imixer_jax.training.logging.writer``); sweeps and reports read it."""

from __future__ import annotations

import json


def read_jsonl(path: str) -> list[dict]:
    """The complete rows of a ``metrics.jsonl`` file. A last line without its newline (a write
    cut by a kill or a full disk) is not a complete row and is skipped."""
    with open(path) as f:
        lines = f.read().split("\n")
    return [json.loads(line) for line in lines[:-1] if line.strip()]
