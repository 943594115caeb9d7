"""Evaluate a checkpoint: ``python -m imixer_jax.evaluate --config configs/FILE.py[:ARG]
--workdir DIR [--step N]`` prints ``{"step", "test/top1", "test/top5", "test/loss"}`` (JSON) of
the newest (or step N) checkpoint in DIR/checkpoints."""

from __future__ import annotations

import json
import sys

from absl import app, flags
from ml_collections import config_flags

from imixer_jax import checkpointing, training
from imixer_jax import config as config_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file the checkpoint was trained with.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Training directory (holds checkpoints/).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    checkpointing.quiet_orbax_logging()
    try:
        result = training.evaluate_checkpoint(_CONFIG.value, _WORKDIR.value, _STEP.value)
    except (config_lib.ConfigError, FileNotFoundError, checkpointing.CheckpointError) as e:
        sys.exit(f"error: {e}")
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main, flags_parser=config_lib.parse_flags)
