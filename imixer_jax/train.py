"""Train and evaluate: ``python -m imixer_jax.train --config configs/FILE.py[:ARG] --workdir DIR
[--config.KEY=VALUE ...] [--verbose]``.

Resumes from the newest checkpoint in DIR. A bad flag, config or workdir, a dataset that is not
prepared or a non-finite loss ends the run with one line ``error: <cause>; <fix>`` on stderr
(exit status 1); ``--verbose`` shows the traceback instead.
"""

from __future__ import annotations

from absl import flags

from imixer_jax import cli

FLAGS = cli.flag_values()
_CONFIG = cli.define_config("Config file (configs/*.py), optionally with :ARG.", FLAGS)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Directory for checkpoints, metrics and logs.",
    required=True,
    flag_values=FLAGS,
)


def main() -> None:
    workdir = cli.output_dir(_WORKDIR.value)
    from imixer_jax import training  # after cli.setup_process (TensorFlow's log level)

    training.train_and_evaluate(_CONFIG.value, workdir)


if __name__ == "__main__":
    cli.run(main, FLAGS)
