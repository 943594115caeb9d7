"""Iteration methods of the fixed-point solver, as values: ``Picard()`` and ``Anderson(...)``.

A method is a frozen dataclass with two functions, called once per iteration by the adjoints'
loops after they have evaluated the map:

* ``init(z0, batch_ndim) -> state``;
* ``update(z, fz, state, batch_ndim) -> (next z, state)``, given the iterate z and f(z).

``batch_ndim`` leading axes of every leaf index independent problems: a method must treat them
separately (Anderson mixes each problem with its own coefficients), so that a sample's
iterates do not depend on the batch it is solved in.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from imixer_jax.hopfield import pytree
from imixer_jax.hopfield.solver.solution import TINY, flat, unflat

PyTree = Any


@pytree.dataclass
class Picard:
    """Plain iteration z <- f(z) (the official iMixer fixed-point iteration)."""

    def init(self, z0: PyTree, batch_ndim: int) -> None:
        return None

    def update(self, z: PyTree, fz: PyTree, state: None, batch_ndim: int) -> tuple[PyTree, None]:
        return fz, None


@pytree.dataclass
class Anderson:
    """Anderson acceleration: the next iterate is sum_i a_i f(z_i) over the last ``memory``
    iterates, a minimising ||sum_i a_i (f(z_i) - z_i)|| subject to sum_i a_i = 1, per problem.

    The coefficients solve (G / s + lambda I) y = 1, a = y / sum(y), with G the Gram matrix of
    the stored residuals and s its mean diagonal (the mean squared residual norm), so that
    ``regularisation`` (lambda) is relative to the residuals' scale: it must stay above float32
    round-off of the normalised Gram matrix (~1e-7), which nearly collinear residuals otherwise
    amplify into large, cancelling coefficients. With ``safeguard`` a problem whose residual
    norm grew over the last step (a mixed step that did not help) forgets its history and takes
    the plain step f(z).

    Attributes:
      memory: iterates mixed (>= 1; 1 is plain iteration).
      regularisation: lambda >= 0, relative to the residuals' scale.
      safeguard: restart a problem from the plain step when its residual grew.
    """

    memory: int = struct.field(pytree_node=False, default=5)
    regularisation: float = struct.field(pytree_node=False, default=1e-5)
    safeguard: bool = struct.field(pytree_node=False, default=True)

    def __post_init__(self):
        if not isinstance(self.memory, numbers.Integral) or self.memory < 1:
            raise ValueError(f"Anderson memory must be an integer >= 1, got {self.memory!r}")
        if not self.regularisation >= 0:
            raise ValueError(f"Anderson regularisation must be >= 0, got {self.regularisation!r}")

    def init(self, z0: PyTree, batch_ndim: int):
        """History of iterates and map values ``[*P, memory, n]`` each (newest last), the count
        of valid entries ``[*P]`` and the last residual norm ``[*P]``."""
        v = flat(z0, batch_ndim)
        history = jnp.zeros((*v.shape[:-1], self.memory, v.shape[-1]), v.dtype)
        count = jnp.zeros(v.shape[:-1], jnp.int32)
        return (
            history,
            history,
            count,
            jnp.full(v.shape[:-1], jnp.inf, _accumulator(v.dtype)),
        )

    def update(self, z: PyTree, fz: PyTree, state, batch_ndim: int):
        xs, fs, count, previous = state
        m, acc = self.memory, _accumulator(xs.dtype)
        x, f = flat(z, batch_ndim), flat(fz, batch_ndim)
        norm = jnp.sqrt(jnp.sum(jnp.square((f - x).astype(acc)), axis=-1))  # [*P]
        if self.safeguard:
            count = jnp.where(norm > previous, 0, count)
        xs = jnp.concatenate([xs[..., 1:, :], x[..., None, :]], axis=-2)
        fs = jnp.concatenate([fs[..., 1:, :], f[..., None, :]], axis=-2)
        count = jnp.minimum(count + 1, m)
        valid = jnp.arange(m) >= m - count[..., None]  # [*P, m]
        both = valid[..., :, None] & valid[..., None, :]
        residuals = (fs - xs).astype(acc)
        gram = jnp.where(both, residuals @ jnp.swapaxes(residuals, -1, -2), 0.0)  # [*P, m, m]
        # Jacobi scaling: unit diagonal, so that lambda is relative to each residual's own norm.
        diagonal = jnp.diagonal(gram, axis1=-2, axis2=-1)
        inv = jnp.where(valid, jax.lax.rsqrt(jnp.maximum(diagonal, TINY)), 0.0)  # [*P, m]
        eye = jnp.eye(m, dtype=acc)
        scaled = gram * inv[..., :, None] * inv[..., None, :] + self.regularisation * eye
        system = jnp.where(both, scaled, eye)  # invalid slots: a_i = 0
        b = jnp.linalg.solve(system, inv[..., None])[..., 0]
        alpha = inv * b
        alpha = alpha / jnp.sum(alpha, axis=-1, keepdims=True)
        mixed = jnp.einsum("...m,...mn->...n", alpha, fs.astype(acc))
        return unflat(mixed, z, batch_ndim), (xs, fs, count, norm)


def _accumulator(dtype) -> jnp.dtype:
    return jnp.promote_types(dtype, jnp.float32)


Method = Picard | Anderson
METHODS = (Picard, Anderson)
