"""Looking inside Hopfield token mixers: energy descent, fixed-point residuals, per-block
energies and spectral sigmas. The library behind ``python -m imixer_jax.analyze`` and
``experiments/energy_descent.ipynb``.

* ``toy``: a toy tied three-layer network and its energy descent (convex vs GELU).
* ``runs``: a training run's config, model at a checkpoint, and evaluation images.
* ``blocks``: per-block quantities of a model and solver surgery; ``blocks.intermediates`` is
  the one place that reads what the models record.
* ``plots``: matplotlib figures of all of the above (matplotlib imported on first use) and
  ``write_plots``.
* ``metaformer`` (imported on its own): the Energy MetaFormer on the digits, trained through
  the core's descent (``experiments/energy_metaformer.ipynb``).
"""

from imixer_jax.analysis.blocks import (
    block_energies,
    block_energy_descent,
    block_inputs,
    block_sigmas,
    forward,
    fresh_like,
    intermediates,
    residuals,
    settle_spectral_norm,
    with_solver,
)
from imixer_jax.analysis.plots import (
    plot_block_energies,
    plot_block_energy_descent,
    plot_energy_descent,
    plot_residuals,
    plot_sigmas,
    plot_training_curves,
    write_plots,
)
from imixer_jax.analysis.runs import (
    LoadedRun,
    RunError,
    accuracy,
    eval_images,
    has_checkpoint,
    load_config,
    load_run,
)
from imixer_jax.analysis.toy import (
    TOY_NETWORKS,
    Descent,
    energy_descent,
    energy_increases,
    three_layer_network,
    toy_energy_curves,
)

__all__ = [
    "TOY_NETWORKS",
    "Descent",
    "LoadedRun",
    "RunError",
    "accuracy",
    "block_energies",
    "block_energy_descent",
    "block_inputs",
    "block_sigmas",
    "energy_descent",
    "energy_increases",
    "eval_images",
    "forward",
    "fresh_like",
    "has_checkpoint",
    "intermediates",
    "load_config",
    "load_run",
    "plot_block_energies",
    "plot_block_energy_descent",
    "plot_energy_descent",
    "plot_residuals",
    "plot_sigmas",
    "plot_training_curves",
    "residuals",
    "settle_spectral_norm",
    "three_layer_network",
    "toy_energy_curves",
    "with_solver",
    "write_plots",
]
