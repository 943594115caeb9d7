"""Evaluate a checkpoint: ``python -m imixer_jax.evaluate --workdir DIR [--step N]
[--config configs/FILE.py[:ARG]] [--verbose]`` prints ``{"step", "test/top1", "test/top5",
"test/loss"}`` (JSON) of the newest (or step N) checkpoint in DIR/checkpoints.

Without ``--config``, the config the run was trained with (``DIR/config.json``) is used.
Read-only: creates nothing. A bad input ends it with one line ``error: <cause>; <fix>``.
"""

from __future__ import annotations

import json

from absl import flags

from imixer_jax import cli

FLAGS = cli.flag_values()
_CONFIG = cli.define_config(
    "Config file the checkpoint was trained with (default: DIR/config.json).",
    FLAGS,
    required=False,
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Training directory (holds checkpoints/).", required=True, flag_values=FLAGS
)
_STEP = flags.DEFINE_integer(
    "step", None, "Checkpoint step (default: the newest).", lower_bound=0, flag_values=FLAGS
)


def main() -> None:
    workdir = cli.run_dir(_WORKDIR.value)
    from imixer_jax import analysis, training  # after cli.setup_process (TF log level)

    config = _CONFIG.value or analysis.load_config(workdir)
    print(json.dumps(training.evaluate_checkpoint(config, workdir, _STEP.value)))


if __name__ == "__main__":
    cli.run(main, FLAGS)
