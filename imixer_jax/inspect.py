"""Inspection plots of a run: ``python -m imixer_jax.inspect --workdir DIR [--out DIR]``.

Loads ``DIR/config.json`` and the newest checkpoint in ``DIR/checkpoints`` and writes PNG files
(default: ``DIR/inspect``): ``energy_descent.png`` (toy tied three-layer network, convex vs GELU),
``residuals.png`` (fixed-point residual per iteration and block, trained vs converged solver),
``sigmas.png`` (spectral-norm sigma per block) and, for tied models, ``block_energies.png`` and
``block_energy_descent.png``. The same plots as ``experiments/energy_descent.ipynb``
(library: ``imixer_jax.inspection``).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from imixer_jax import checkpointing, inspection
from imixer_jax import config as config_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Training directory (config.json, checkpoints/).")
_OUT = flags.DEFINE_string("out", None, "Output directory for the PNG files (default DIR/inspect).")
_IMAGES = flags.DEFINE_integer("num_images", 64, "Test images for the residual statistics.")
flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    checkpointing.quiet_orbax_logging()
    if not inspection.has_checkpoint(_WORKDIR.value):
        sys.exit(f"error: no config.json and checkpoint in {_WORKDIR.value}")
    out = _OUT.value or os.path.join(_WORKDIR.value, "inspect")
    try:
        paths = inspection.write_plots(_WORKDIR.value, out, num_images=_IMAGES.value)
    except config_lib.ConfigError as e:
        sys.exit(f"error: {e}")
    for path in paths:
        logging.info("wrote %s", path)
        print(path)


if __name__ == "__main__":
    app.run(main)
