"""Train and evaluate: ``python -m imixer_jax.train --config configs/FILE.py[:ARG] --workdir DIR
[--config.KEY=VALUE ...]``.

Resumes from the newest checkpoint in DIR. A bad flag, an invalid config, a dataset that is not
prepared or a non-finite loss ends the run with one line ``error: ...`` on stderr (exit status 1).
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from imixer_jax import checkpointing, training
from imixer_jax import config as config_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py), optionally with :ARG.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    checkpointing.quiet_orbax_logging()
    try:
        training.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (config_lib.ConfigError, training.TrainingError, checkpointing.CheckpointError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main, flags_parser=config_lib.parse_flags)
