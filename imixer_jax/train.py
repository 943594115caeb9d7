"""Train and evaluate: ``python -m imixer_jax.train --config configs/FILE.py[:ARG] --workdir DIR
[--config.KEY=VALUE ...] [--allow_config_change=KEY,...] [--restart_damaged] [--verbose]``.

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
_ALLOW = flags.DEFINE_list(
    "allow_config_change",
    [],
    "Resume although these config keys (or sections, e.g. schedule) differ from the config the "
    "checkpoints were trained with; the change is recorded in DIR/config_history.jsonl.",
    flag_values=FLAGS,
)
_RESTART = flags.DEFINE_bool(
    "restart_damaged",
    False,
    "When every checkpoint in DIR is damaged, set them and metrics.jsonl aside in "
    "DIR/damaged_checkpoints and train from step 0.",
    flag_values=FLAGS,
)


def main() -> None:
    workdir = cli.output_dir(_WORKDIR.value)
    from imixer_jax import training  # after cli.setup_process (TensorFlow's log level)

    training.train_and_evaluate(
        _CONFIG.value,
        workdir,
        allow_config_change=_ALLOW.value,
        restart_damaged=_RESTART.value,
    )


if __name__ == "__main__":
    cli.run(main, FLAGS)
