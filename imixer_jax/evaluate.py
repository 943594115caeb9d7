"""Evaluate a checkpoint: ``python -m imixer_jax.evaluate --config configs/FILE.py[:ARG]
--workdir DIR [--step N] [--verbose]`` prints ``{"step", "test/top1", "test/top5", "test/loss"}``
(JSON) of the newest (or step N) checkpoint in DIR/checkpoints.

Read-only: creates nothing. A bad input ends it with one line ``error: <cause>; <fix>``.
"""

from __future__ import annotations

import json

from absl import flags

from imixer_jax import cli

_CONFIG = cli.define_config("Config file the checkpoint was trained with.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Training directory (holds checkpoints/).", required=True
)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).", lower_bound=0)


def main(argv: list[str]) -> None:
    del argv  # parse_flags rejects positional arguments
    workdir = cli.run_dir(_WORKDIR.value)
    from imixer_jax import training  # after cli.setup_process (TensorFlow's log level)

    print(json.dumps(training.evaluate_checkpoint(_CONFIG.value, workdir, _STEP.value)))


if __name__ == "__main__":
    cli.run_absl(main)
