"""Analysis plots of a run: ``python -m imixer_jax.analyze --workdir DIR [--out DIR]
[--num_images N] [--verbose]``.

Loads ``DIR/config.json``, ``DIR/metrics.jsonl`` and the newest checkpoint in
``DIR/checkpoints`` and writes PNG files (default: ``DIR/analysis``): ``training_curves.png``
(train loss and test top-1 against the step), ``energy_descent.png`` (toy tied three-layer
network, convex vs GELU), ``residuals.png`` (fixed-point residual per iteration and block,
trained vs converged solver), ``sigmas.png`` (spectral-norm sigma per block) and, for tied
models, ``block_energies.png`` and ``block_energy_descent.png``. The same plots as
``experiments/energy_descent.ipynb`` (library: ``imixer_jax.analysis``). Creates nothing but the
output directory; a bad input ends it with one line ``error: <cause>; <fix>``.
"""

from __future__ import annotations

import os

from absl import flags, logging

from imixer_jax import cli

FLAGS = cli.flag_values()
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Training directory (config.json, checkpoints/).",
    required=True,
    flag_values=FLAGS,
)
_OUT = flags.DEFINE_string(
    "out", None, "Output directory for the PNG files (default: DIR/analysis).", flag_values=FLAGS
)
_IMAGES = flags.DEFINE_integer(
    "num_images", 64, "Test images for the residual statistics.", lower_bound=1, flag_values=FLAGS
)


def main() -> None:
    workdir = cli.run_dir(_WORKDIR.value)
    out = cli.output_dir(_OUT.value or os.path.join(workdir, "analysis"), flag="--out")
    from imixer_jax import analysis  # after cli.setup_process (TensorFlow's log level)

    if not analysis.has_checkpoint(workdir):
        raise cli.UsageError(
            f"--workdir {workdir} has no config.json or no complete checkpoint; "
            "pass the workdir of a training run that saved one"
        )
    for path in analysis.write_plots(workdir, out, num_images=_IMAGES.value):
        logging.info("wrote %s", path)
        print(path)


if __name__ == "__main__":
    cli.run(main, FLAGS)
