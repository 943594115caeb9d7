"""Fixed-point solver z* = f(z*, params) with unrolled or implicit (IFT) gradients.

``fixed_point`` returns a ``Solution`` (value, residual, steps, per-iteration residuals), in the
spirit of optimistix; the adjoint is a parameter:

* ``'unrolled'``: back-propagate through the iterations, exactly like the official iMixer FPA.
  With ``tol == 0`` it runs exactly ``max_steps`` iterations (``n_iter``); with ``tol > 0`` it
  still runs ``max_steps`` iterations under ``lax.scan`` (reverse-mode needs a fixed trip count)
  but freezes z once converged, so the value equals that of an early stop.
* ``'implicit'``: forward under ``lax.while_loop`` until the residual drops below ``tol`` (or
  ``max_steps``); the backward pass solves the adjoint fixed point w = zbar + J_f(z*)^T w by the
  same iteration, so memory does not grow with the number of steps. z0 receives no gradient.

The residual of iteration k is ||z_k - z_{k-1}|| / ||z_k|| over the whole (batched) state: the
relative step size, free to compute. Convergence is reported, never assumed.

Written by hand because the solver libraries (optimistix, jaxopt) are not among the project's
dependencies and we need the official iteration's exact op order and a per-step parameter hook.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

PyTree = Any
_TINY = 1e-30


@struct.dataclass
class Solution:
    """Result of a fixed-point solve.

    Attributes:
      value: the last iterate z (same pytree structure and shapes as z0).
      residual: scalar, relative step size of the last iteration (0 when no step was taken).
      steps: scalar int32, iterations performed (for ``'unrolled'`` with tol: until converged).
      residuals: ``[max_steps]`` relative step size per iteration (NaN for iterations not run).
    """

    value: PyTree
    residual: jax.Array
    steps: jax.Array
    residuals: jax.Array


def _norm(tree: PyTree) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    # Accumulate in at least float32 (bfloat16 states), in float64 when the states are.
    return jnp.sqrt(
        sum(jnp.sum(jnp.square(x.astype(jnp.promote_types(x.dtype, jnp.float32)))) for x in leaves)
    )


def relative_step(z_new: PyTree, z_old: PyTree) -> jax.Array:
    """||z_new - z_old|| / ||z_new|| over all leaves (a scalar)."""
    diff = jax.tree.map(jnp.subtract, z_new, z_old)
    return _norm(diff) / jnp.maximum(_norm(z_new), _TINY)


def fixed_point(
    fn: Callable[[PyTree, PyTree], PyTree],
    z0: PyTree,
    params: PyTree,
    *,
    max_steps: int,
    tol: float = 0.0,
    adjoint: str = "unrolled",
    per_step_params: PyTree | None = None,
) -> Solution:
    """Iterates z <- fn(z, params) from z0.

    Args:
      fn: the map; ``fn(z, params)`` returns a pytree shaped like z.
      z0: initial iterate.
      params: everything fn depends on that should receive gradients (pass closed-over arrays here).
      max_steps: number of iterations (``n_iter``) or the cap when ``tol > 0``.
      tol: stop once the relative step size is <= tol (0: always run ``max_steps``).
      adjoint: ``'unrolled'`` or ``'implicit'``.
      per_step_params: optional pytree whose leaves carry a leading ``[max_steps]`` axis; iteration
        k then calls ``fn(z, params, slice_k)`` (a non-stationary map, e.g. the official per-call
        spectral normalisation). Only with ``adjoint='unrolled'``.
    """
    if max_steps < 0:
        raise ValueError(f"max_steps must be >= 0, got {max_steps}")
    if adjoint not in ("unrolled", "implicit"):
        raise ValueError(f"adjoint must be 'unrolled' or 'implicit', got {adjoint!r}")
    if per_step_params is not None and adjoint != "unrolled":
        raise ValueError("per_step_params needs adjoint='unrolled' (the map must be stationary)")
    if adjoint == "unrolled":
        return _unrolled(fn, z0, params, max_steps, tol, per_step_params)
    return _implicit(fn, z0, params, max_steps, tol)


def _unrolled(fn, z0, params, max_steps, tol, per_step_params) -> Solution:
    def body(carry, step_params):
        z, steps, done = carry
        z_new = fn(z, params) if step_params is None else fn(z, params, step_params)
        res = relative_step(z_new, z)
        if tol > 0:
            z_new = jax.tree.map(lambda a, b: jnp.where(done, a, b), z, z_new)
            res = jnp.where(done, jnp.nan, res)
            steps = steps + jnp.where(done, 0, 1)
            done = done | (res <= tol)
        else:
            steps = steps + 1
        return (z_new, steps, done), res

    init = (z0, jnp.zeros((), jnp.int32), jnp.zeros((), bool))
    (z, steps, _), residuals = jax.lax.scan(body, init, per_step_params, length=max_steps)
    return Solution(z, _last_residual(residuals, steps), steps, residuals)


def _last_residual(residuals: jax.Array, steps: jax.Array) -> jax.Array:
    if residuals.shape[0] == 0:
        return jnp.zeros((), jnp.float32)
    return jnp.where(steps > 0, residuals[jnp.maximum(steps - 1, 0)], 0.0)


def _forward_loop(fn, z0, params, max_steps, tol):
    """while_loop iteration without a tape: (z, steps, residual history)."""
    history0 = jnp.full((max_steps,), jnp.nan, relative_step(z0, z0).dtype)

    def cond(carry):
        _, steps, res, _ = carry
        return (steps < max_steps) & (res > tol)

    def body(carry):
        z, steps, _, hist = carry
        z_new = fn(z, params)
        res = relative_step(z_new, z)
        return z_new, steps + 1, res, hist.at[steps].set(res)

    init = (z0, jnp.zeros((), jnp.int32), jnp.asarray(jnp.inf, history0.dtype), history0)
    z, steps, _, hist = jax.lax.while_loop(cond, body, init)
    return z, steps, hist


def _implicit(fn, z0, params, max_steps, tol) -> Solution:
    z, steps, hist = _implicit_solve(fn, max_steps, tol, z0, params)
    return Solution(z, _last_residual(hist, steps), steps, hist)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _implicit_solve(fn, max_steps, tol, z0, params):
    return _forward_loop(fn, z0, params, max_steps, tol)


def _implicit_fwd(fn, max_steps, tol, z0, params):
    z, steps, hist = _forward_loop(fn, z0, params, max_steps, tol)
    return (z, steps, hist), (z, params, z0)


def _implicit_bwd(fn, max_steps, tol, saved, cotangents):
    z, params, z0 = saved
    z_bar = cotangents[0]
    _, vjp_z = jax.vjp(lambda z_: fn(z_, params), z)

    # Adjoint fixed point w = z_bar + J_z^T w, solved by the same (contracting) iteration.
    def adjoint_map(w, _):
        (jt_w,) = vjp_z(w)
        return jax.tree.map(jnp.add, z_bar, jt_w)

    w, _, _ = _forward_loop(adjoint_map, z_bar, None, max_steps, tol)
    _, vjp_p = jax.vjp(lambda p: fn(z, p), params)
    (params_bar,) = vjp_p(w)
    z0_bar = jax.tree.map(jnp.zeros_like, z0)
    return z0_bar, params_bar


_implicit_solve.defvjp(_implicit_fwd, _implicit_bwd)
