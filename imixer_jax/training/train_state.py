"""The train state and how a fresh one is made, from typed pieces only (a model config, an optax
optimiser): no ``ml_collections``, so a benchmark or another driver builds the trainer's state
without the trainer's config. ``state.prepare`` / ``state.init_state`` fill these from a config.

The model is held as ``graphdef, params, rest = nnx.split(model, nnx.Param, ...)``: ``params`` are
differentiated and updated by the optimiser; ``rest`` (spectral-norm power-iteration vectors) is
carried through the step and updated by the training-mode forward pass.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from imixer_jax.models import registry
from imixer_jax.models.configs import ModelConfig

Array = jax.Array

# ``jax.jit(..., compiler_options=RUN_ONCE)`` for a program that runs once (initialising a state):
# XLA's backend (LLVM) optimisation would only add seconds of CPU compile time.
RUN_ONCE = {"xla_backend_optimization_level": 0}


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs; a pytree of arrays.

    Attributes:
      step: int32 ``[]``, steps done = index of the next global batch (the data position).
      rng: uint32 key data of the root key; step s draws from ``fold_in(root, s)``.
      params: ``nnx.State`` of the model's ``Param``s.
      rest: ``nnx.State`` of the other model variables (spectral-norm u, v).
      opt_state: optax state of ``params``.
      ema_params: exponential moving average of ``params``, or None without EMA.
    """

    step: Array
    rng: Array
    params: nnx.State
    rest: nnx.State
    opt_state: optax.OptState
    ema_params: nnx.State | None


def graphdefs(model: ModelConfig) -> tuple[nnx.GraphDef, nnx.GraphDef]:
    """``(training-mode, evaluation-mode)`` graphdefs of the model of ``model``, from abstract
    shapes (nothing is allocated)."""
    module = nnx.eval_shape(lambda: registry.build(model, rngs=nnx.Rngs(params=jax.random.key(0))))
    module.train()
    train_graphdef, _, _ = nnx.split(module, nnx.Param, ...)
    module.eval()
    eval_graphdef, _, _ = nnx.split(module, nnx.Param, ...)
    return train_graphdef, eval_graphdef


def new_state(
    model: ModelConfig, tx: optax.GradientTransformation, *, seed: int, ema: bool
) -> TrainState:
    """A fresh state of the model of ``model``: parameters from ``split(key(seed))[0]``, the run's
    root key the other half; ``ema``: keep an EMA of the parameters. Trace it under
    ``jax.eval_shape`` or ``jax.jit(..., out_shardings=...)`` to create it abstractly or sharded."""
    init_key, root = jax.random.split(jax.random.key(seed))  # root: the run's streams
    module = registry.build(model, rngs=nnx.Rngs(params=init_key))
    module.train()
    _, params, rest = nnx.split(module, nnx.Param, ...)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        rng=jax.random.key_data(root),
        params=params,
        rest=rest,
        opt_state=tx.init(params),
        ema_params=params if ema else None,
    )
