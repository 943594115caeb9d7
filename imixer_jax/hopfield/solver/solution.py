"""What a solve returns (``Solution``), its status codes, and the per-problem arithmetic the
methods and adjoints share: norms, the relative residual, masks, flattening."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from imixer_jax.hopfield import pytree

PyTree = Any
TINY = 1e-30
CONVERGED, MAX_STEPS, DIVERGED = 0, 1, 2
STATUS = ("converged", "max_steps", "diverged")


@pytree.dataclass
class Solution:
    """Result of a fixed-point solve (``P`` = the stopping test's batch shape: the problems'
    leading axes with per-sample stopping, ``()`` otherwise).

    Attributes:
      value: the last iterate z (same pytree structure and shapes as z0); f(z) of the last
        evaluated z once that z passed the test.
      residual: ``P``, relative residual ||f(z) - z|| / ||f(z)|| of the last evaluated iterate
        (0 when no step was taken).
      steps: ``P`` int32, evaluations of the map (for ``Unrolled`` with tol: until converged).
      residuals: ``[max_steps, *P]`` residual per iteration (NaN for those not run).
      status: ``P`` int32, ``CONVERGED``, ``MAX_STEPS`` or ``DIVERGED`` (names in ``STATUS``).
    """

    value: PyTree
    residual: jax.Array
    steps: jax.Array
    residuals: jax.Array
    status: jax.Array


def sq_norm(tree: PyTree, batch_ndim: int) -> jax.Array:
    """Squared norm over every axis but the leading ``batch_ndim`` ones (summed over leaves),
    accumulated in at least float32 (bfloat16 states) and in float64 when the states are."""
    return sum(
        jnp.sum(
            jnp.square(x.astype(jnp.promote_types(x.dtype, jnp.float32))),
            axis=tuple(range(batch_ndim, x.ndim)),
        )
        for x in jax.tree.leaves(tree)
    )


def relative_step(z_new: PyTree, z_old: PyTree, batch_ndim: int = 0) -> jax.Array:
    """||z_new - z_old|| / ||z_new|| over all leaves, per problem (shape: leading batch axes)."""
    diff = jax.tree.map(jnp.subtract, z_new, z_old)
    return jnp.sqrt(sq_norm(diff, batch_ndim)) / jnp.maximum(
        jnp.sqrt(sq_norm(z_new, batch_ndim)), TINY
    )


def status(residual: jax.Array, tol: float) -> jax.Array:
    """Status codes from the last residual (NaN or inf: diverged)."""
    converged = residual <= tol if tol > 0 else jnp.zeros_like(residual, bool)
    code = jnp.where(converged, CONVERGED, MAX_STEPS)
    return jnp.where(jnp.isfinite(residual), code, DIVERGED).astype(jnp.int32)


def mask(done: jax.Array, new: PyTree, old: PyTree) -> PyTree:
    """Per problem: ``old`` where ``done`` (shape: a prefix of every leaf's shape), else ``new``."""

    def pick(a, b):
        d = done.reshape(done.shape + (1,) * (a.ndim - done.ndim))
        return jnp.where(d, b, a)

    return jax.tree.map(pick, new, old)


def last_residual(residuals: jax.Array, steps: jax.Array) -> jax.Array:
    """The residual of the last step taken, per problem (0 where none was)."""
    if residuals.shape[0] == 0:
        return jnp.zeros(steps.shape, residuals.dtype)
    index = jnp.maximum(steps - 1, 0)[None]
    last = jnp.take_along_axis(residuals, index, axis=0)[0]
    return jnp.where(steps > 0, last, 0.0)


def batch_shape(tree: PyTree, batch_ndim: int) -> tuple[int, ...]:
    return jnp.shape(jax.tree.leaves(tree)[0])[:batch_ndim]


def flat(tree: PyTree, batch_ndim: int) -> jax.Array:
    """The leaves as one vector per problem, ``[*P, n]``."""
    leaves = jax.tree.leaves(tree)
    batch = jnp.shape(leaves[0])[:batch_ndim]
    return jnp.concatenate([x.reshape(batch + (-1,)) for x in leaves], axis=-1)


def unflat(vector: jax.Array, like: PyTree, batch_ndim: int) -> PyTree:
    """Inverse of ``flat``: ``[*P, n]`` back into the structure, shapes and dtypes of ``like``."""
    leaves, treedef = jax.tree.flatten(like)
    out, start = [], 0
    for x in leaves:
        size = math.prod(x.shape[batch_ndim:])
        out.append(vector[..., start : start + size].reshape(x.shape).astype(x.dtype))
        start += size
    return jax.tree.unflatten(treedef, out)
