"""Per-block quantities of a Mixer: fixed-point residuals, reduced energies, spectral sigmas,
block inputs, and the energy along each block's token-mixer dynamics; plus model surgery
(``with_solver``: the same weights under other solver settings).

Shapes: images ``[B, H, W, 3]`` in [-1, 1]; token matrices ``[B, S, D]``; per-block results are
stacked along a leading block axis ``[num_blocks, ...]``. Every read of the intermediates the
models record goes through ``intermediates``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from imixer_jax.models.mixer import Mixer, capture_intermediates
from imixer_jax.models.spectral_norm import spectral_sigmas
from imixer_jax.training.train_state import RUN_ONCE

Array = jax.Array


def with_solver(model: Mixer, **solver) -> Mixer:
    """A copy of ``model`` (same arrays, evaluation mode) whose token mixers use other solver or
    update settings, e.g. ``n_iter=50, tol=1e-5, adjoint='implicit'`` or ``update_rule='euler'``
    (fields of ``model.config``). Only fields that leave the parameter structure unchanged are
    allowed."""
    allowed = {"n_iter", "tol", "adjoint", "update_rule", "step_size"}
    if set(solver) - allowed:
        raise ValueError(f"with_solver changes only {sorted(allowed)}, got {sorted(solver)}")
    config = model.config.replace(**solver)
    abstract = nnx.eval_shape(lambda: Mixer(config, rngs=nnx.Rngs(0)))
    graphdef, _ = nnx.split(abstract)
    copy = nnx.merge(graphdef, nnx.state(model))
    copy.eval()
    return copy


def fresh_like(model: Mixer, seed: int) -> Mixer:
    """A freshly initialised ``model`` (its class, config and mode; the official initialisation
    drawn from ``seed``), its arrays placed as ``model``'s are (a restored run's on the run's
    mesh), so that a program compiled for one, e.g. ``forward``'s, serves the other."""
    graphdef, state = nnx.split(model)
    fresh = _initial_state(type(model), model.config, jax.random.key(seed))
    return nnx.merge(graphdef, jax.device_put(fresh, jax.tree.map(lambda x: x.sharding, state)))


# One program for all the draws (eagerly, every parameter shape compiles its own sampler); it runs
# once per config.
@functools.partial(jax.jit, static_argnums=(0, 1), compiler_options=RUN_ONCE)
def _initial_state(cls: type, config, key: Array) -> nnx.State:
    return nnx.state(cls(config, rngs=nnx.Rngs(params=key)))


def intermediates(module: nnx.Module, x: Array) -> tuple[Array, dict]:
    """``module(x)`` and the intermediates it records: the one place that reads them.

    ``module`` is a ``Mixer`` (``x``: images ``[B, H, W, 3]``; returns logits ``[B, classes]``
    and ``{'block_<i>': token-mixer dict}``) or a token mixer (``x``: tokens ``[B, S, D]``;
    returns the increment ``[B, S, D]`` and its dict). A token-mixer dict holds ``residuals``
    ``[n_iter]`` and ``steps`` (fixed-point solve), ``sigma`` (spectral norm) and, tied only,
    ``energy_before`` / ``energy_after`` ``[B]``. Traceable (call it under ``jit``). The models
    sow these as ``nnx.Intermediate``s only when asked (``capture_intermediates``), so a training
    step never computes them.
    """
    out, sown = capture_intermediates(module, x)
    sown = nnx.to_pure_dict(sown)
    if "blocks" not in sown:  # a token mixer
        return out, _token_mixer_info(sown)
    return out, {
        f"block_{i}": _token_mixer_info(b["token_mixer"]) for i, b in sown["blocks"].items()
    }


def _token_mixer_info(sown: dict) -> dict:
    """A token mixer's sown tree as a flat dict; the spectral-norm layers' ``sigma`` entries
    become ``{'sigma': {'fc_sn1': ..., 'fc_sn2': ...}}``."""
    info = {k: v for k, v in sown.items() if not isinstance(v, dict)}
    sigmas = {k: v["sigma"] for k, v in sown.items() if isinstance(v, dict) and "sigma" in v}
    return {**info, "sigma": sigmas} if sigmas else info


@nnx.jit
def _forward(model: Mixer, images: Array) -> tuple[Array, dict]:
    return intermediates(model, images)


def forward(model: Mixer, images) -> tuple[np.ndarray, dict]:
    """Logits ``[B, classes]`` and the per-block intermediates (see ``intermediates``), on
    host."""
    logits, info = _forward(model, jnp.asarray(images))
    return np.asarray(logits), jax.device_get(info)


def settle_spectral_norm(model: Mixer, images) -> None:
    """One training-mode forward on ``images`` (no parameter update): advances the power
    iteration of every spectrally normalised layer as the first training step would, so that
    the sigma estimates of a freshly initialised model are meaningful. Leaves ``model`` in
    evaluation mode."""
    model.train()
    _train_forward(model, jnp.asarray(images))
    model.eval()


@nnx.jit
def _train_forward(model: Mixer, images: Array) -> None:
    model(images, rngs=nnx.Rngs(dropout=0))


def residuals(info: Mapping) -> np.ndarray:
    """Fixed-point residual per iteration ``[num_blocks, n_iter]`` from ``forward``'s
    intermediates (NaN for iterations not run after an early stop)."""
    return np.stack([np.asarray(info[f"block_{i}"]["residuals"]) for i in range(len(info))])


def block_energies(info: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """Reduced energy of every block's token-mixer network before and after its update, each
    ``[num_blocks, B]`` (tied models only)."""
    blocks = [info[f"block_{i}"] for i in range(len(info))]
    if "energy_before" not in blocks[0]:
        raise ValueError("the energy exists only for tied models (model.tied=True)")
    before = np.stack([np.asarray(b["energy_before"]) for b in blocks])
    after = np.stack([np.asarray(b["energy_after"]) for b in blocks])
    return before, after


def block_sigmas(model: Mixer) -> dict[str, np.ndarray]:
    """Spectral-norm sigma estimate (of the raw kernel, before the soft normalisation) of every
    block: ``{'fc_sn1': [num_blocks], 'fc_sn2': [num_blocks]}`` (fc_sn2 absent when tied)."""
    out: dict[str, list[float]] = {}
    for path, sigma in spectral_sigmas(model).items():
        out.setdefault(path.rsplit("/", 1)[-1], []).append(float(sigma))
    return {name: np.asarray(values) for name, values in out.items()}


def block_inputs(model: Mixer, images) -> list[Array]:
    """Input token matrix ``[B, S, D]`` of every block (the backbone's stem and blocks, run
    one by one)."""
    return _block_inputs(model, jnp.asarray(images))


@nnx.jit
def _block_inputs(model: Mixer, images: Array) -> list[Array]:
    x = model.embed(images)
    inputs = []
    for block in model.blocks:
        inputs.append(x)
        x = block(x)
    return inputs


def block_energy_descent(
    model: Mixer,
    images,
    *,
    step_size: float = 0.1,
    num_steps: int = 60,
    n_iter: int = 100,
    tol: float = 1e-6,
) -> np.ndarray:
    """Reduced energy ``[num_blocks, num_steps + 1, B]`` along ``num_steps`` Euler steps
    X <- X + step_size (y(X) - X) of every block's token-mixer network (tied models only),
    started from the block's actual input; fast layers solved to ``tol`` (at most ``n_iter``
    iterations) at every step, as the reduced dynamics assume."""
    if not model.config.tied:
        raise ValueError("the energy exists only for tied models (model.config.tied=True)")
    euler = with_solver(
        model,
        update_rule="euler",
        step_size=step_size,
        n_iter=n_iter,
        tol=tol,
        adjoint="implicit",
    )
    curves = []
    for block, x0 in zip(euler.blocks, block_inputs(euler, images)):
        graphdef, state = nnx.split(block.token_mixer)
        curves.append(np.asarray(_descend_block(graphdef, state, x0, num_steps)))
    return np.stack(curves)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _descend_block(graphdef, state, x0: Array, num_steps: int) -> Array:
    def energy_and_increment(x):
        increment, info = intermediates(nnx.merge(graphdef, state), x)
        return info["energy_before"], increment

    def step(x, _):
        energy, increment = energy_and_increment(x)
        return x + increment, energy

    final, energies = jax.lax.scan(step, x0, None, length=num_steps)
    return jnp.concatenate([energies, energy_and_increment(final)[0][None]])
