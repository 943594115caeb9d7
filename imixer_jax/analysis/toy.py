"""A toy tied three-layer Hopfield network and its energy descent: with convex Lagrangians the
energy never rises along the dynamics; with GELU it can (see docs/theory.md).

Shapes: states ``[batch, n_A]`` per layer; trajectories ``[num_steps + 1, batch]``.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from imixer_jax.hopfield import Dense, HierarchicalNetwork, Layer, lagrangians

Array = jax.Array
F32_EPS = float(np.finfo(np.float32).eps)
CHUNK = 500  # steps per compiled scan of ``energy_descent``


def three_layer_network(
    key: Array,
    *,
    hidden: tuple[str, str] = ("gelu", "gelu"),
    sizes: tuple[int, int, int] = (16, 24, 12),
    weight_scale: float = 1.0,
    sn_coeff: float = 0.9,
    bias_mean: float = 0.0,
) -> HierarchicalNetwork:
    """A tied three-layer HHN shaped like the iMLP: visible LayerNorm layer (scalar gain 1,
    convex), then two hidden layers with the Lagrangians named in ``hidden`` (``('gelu', 'gelu')``
    as the iMLP, ``('relu', 'relu')`` as a convex counterpart). Synapse 0 is
    ``N(0, weight_scale^2 / n_in)``; synapse 1 is a Gaussian matrix scaled to spectral norm
    ``sn_coeff`` (as the iMLP's soft spectral norm leaves it). Hidden biases ``N(bias_mean,
    0.1^2)``: a negative mean pushes neurons into GELU's falling branch (x < -0.75). All time
    constants 1; states are vectors ``[*batch, n_A]``. The same ``key`` gives the same weights
    whatever the Lagrangians."""
    biases, (w0, w1) = _toy_arrays(key, tuple(sizes), weight_scale, sn_coeff, bias_mean)
    layers = [Layer(lagrangians.LayerNorm(gamma=1.0), (sizes[0],))]
    layers += [
        Layer(lagrangians.get(name), (n,), bias=bias)
        for name, n, bias in zip(hidden, sizes[1:], biases)
    ]
    return HierarchicalNetwork(tuple(layers), (Dense(w0), Dense(w1)))


@partial(jax.jit, static_argnums=1)
def _toy_arrays(key, sizes, weight_scale, sn_coeff, bias_mean):
    """The hidden biases and the two weights of ``three_layer_network``, drawn in one compiled
    program (drawn eagerly, every shape would compile its own sampler)."""
    keys = iter(jax.random.split(key, 4))
    biases = [bias_mean + 0.1 * jax.random.normal(next(keys), (n,)) for n in sizes[1:]]
    w0 = weight_scale * jax.random.normal(next(keys), sizes[:2]) / np.sqrt(sizes[0])
    w1 = jax.random.normal(next(keys), sizes[1:])
    return biases, (w0, sn_coeff * w1 / jnp.linalg.norm(w1, ord=2))


@dataclasses.dataclass
class Descent:
    """Energy descent of a batch of trajectories (time t = step * dt).

    Attributes:
      energies: ``[num_steps + 1, batch]`` energy at every visited state.
      rates: ``[num_steps + 1, batch]`` exact dE/dt at every visited state (the derivative of
        the energy along the velocity field, by ``jax.jvp``; no discretisation error). With
        convex Lagrangians it is <= 0 everywhere (docs/theory.md); with GELU it need not be.
      dt: the Euler step.
    """

    energies: np.ndarray
    rates: np.ndarray
    dt: float

    def rising(self) -> dict[str, float]:
        """``fraction`` of visited states with dE/dt > 0 (beyond 1e-5 of the trajectory's
        largest |dE/dt|, float32 rounding), the ``max_rate`` and ``total_rise`` (the largest,
        over trajectories, integral of the positive part of dE/dt: how much the energy went up
        in all)."""
        scale = np.abs(self.rates).max(axis=0)
        up = self.rates > 1e-5 * scale
        positive = np.where(up, self.rates, 0.0)
        return {
            "fraction": float(up.mean()),
            "max_rate": float(self.rates.max()),
            "total_rise": float((positive.sum(axis=0) * self.dt).max()),
        }


def energy_descent(
    net: HierarchicalNetwork,
    key: Array,
    *,
    batch: int = 8,
    dt: float = 0.01,
    num_steps: int = 1500,
    init_scale: float = 2.0,
) -> Descent:
    """Explicit-Euler dynamics of the tied ``net`` from ``batch`` random initial states
    ``N(0, init_scale^2)``: energies and exact energy rates along the trajectories.

    The steps run in scans of ``min(CHUNK, num_steps)`` steps, each starting where the last
    ended (the same Euler steps as one long scan, bit for bit), and ``dt`` is traced: every
    ``dt``, and every ``num_steps`` from ``CHUNK`` on, share one compiled scan per network
    structure.
    """
    shapes = tuple(layer.shape for layer in net.layers)
    xs = _initial_states(key, shapes, batch, init_scale)
    chunk = min(CHUNK, num_steps)
    energies, rates = [], []
    for start in range(0, num_steps, chunk):
        e, states, xs = net.descend(xs, dt=dt, num_steps=chunk, return_states=True)
        first = 0 if start == 0 else 1  # a later scan's first state ends the one before
        energies.append(np.asarray(e)[first:])
        rates.append(np.asarray(_energy_rates(net, states))[first:])
    return Descent(
        np.concatenate(energies)[: num_steps + 1], np.concatenate(rates)[: num_steps + 1], dt
    )


@partial(jax.jit, static_argnums=(1, 2))
def _initial_states(key: Array, shapes, batch: int, init_scale: float) -> tuple[Array, ...]:
    """``N(0, init_scale^2)`` states ``[batch, *shape]``, one per layer."""
    keys = jax.random.split(key, len(shapes))
    return tuple(init_scale * jax.random.normal(k, (batch, *s)) for k, s in zip(keys, shapes))


@jax.jit
def _energy_rates(net: HierarchicalNetwork, states) -> Array:
    """dE/dt ``[steps, batch]`` at every state (each ``[steps, batch, n_A]``)."""
    return jax.vmap(lambda xs: jax.jvp(net.energy, (xs,), (net.dynamics(xs),))[1])(states)


def energy_increases(energies: np.ndarray) -> dict[str, float]:
    """Rises of a sequence of energies ``[steps + 1, ...]`` between consecutive steps.

    A rise counts when it exceeds float32 rounding of the energy, 256 ulp * (1 + |E|) (the energy
    sums up to a few hundred float32 terms of that size). Returns the ``fraction`` of steps that
    rise and ``total_rise``, the largest (over the trailing axes) sum of the rises.
    """
    diff = np.diff(energies, axis=0)
    rise = np.where(diff > 256 * F32_EPS * (1.0 + np.abs(energies[1:])), diff, 0.0)
    return {"fraction": float((rise > 0).mean()), "total_rise": float(rise.sum(axis=0).max())}


TOY_NETWORKS = {
    "ReLU, biases -2": dict(hidden=("relu", "relu"), bias_mean=-2.0),
    "GELU, biases 0": dict(hidden=("gelu", "gelu"), bias_mean=0.0),
    "GELU, biases -2": dict(hidden=("gelu", "gelu"), bias_mean=-2.0),
}


def toy_energy_curves(key: Array, *, dt: float = 0.01, num_steps: int = 1500) -> dict:
    """Energy descent of the tied three-layer networks ``TOY_NETWORKS`` (same weights and
    initial states): ``{label: Descent}``."""
    net_key, state_key = jax.random.split(key)
    return {
        label: energy_descent(
            three_layer_network(net_key, **kwargs), state_key, dt=dt, num_steps=num_steps
        )
        for label, kwargs in TOY_NETWORKS.items()
    }
