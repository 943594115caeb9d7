"""How gradients flow through a fixed-point solve, as values: ``Unrolled(...)`` and
``Implicit(...)``. Each owns its loop (``solve``), called by ``fixed_point``.

* ``Unrolled``: back-propagate through the iterations, exactly like the official iMixer FPA.
  With ``tol == 0`` it runs exactly ``max_steps`` iterations (``n_iter``); with ``tol > 0`` it
  still runs ``max_steps`` iterations under ``lax.scan`` (reverse mode needs a fixed trip count)
  but freezes each problem once converged, so the value equals that of an early stop. Small step
  counts (``<= UNROLL_MAX``) are fully unrolled by default: a rolled loop of two steps cost three
  times one step on a GPU. ``per_step`` gives iteration k its own parameters.
* ``Implicit``: forward under ``lax.while_loop`` until every problem passes the test (or
  ``max_steps``); the backward pass solves the adjoint fixed point w = zbar + J_f(z*)^T w with
  its own tolerance, step cap and method, so memory does not grow with the number of steps. z0
  receives no gradient. Arrays that ``fn`` closes over are hoisted by ``jax.closure_convert``
  and receive their gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from imixer_jax.hopfield import pytree
from imixer_jax.hopfield.solver.methods import Method
from imixer_jax.hopfield.solver.solution import (
    Solution,
    batch_shape,
    last_residual,
    mask,
    relative_step,
    status,
)

PyTree = Any
UNROLL_MAX = 8  # the unrolled adjoint unrolls loops of at most this many steps by default


@pytree.dataclass
class Unrolled:
    """Back-propagation through the iterations.

    Attributes:
      unroll: ``lax.scan`` unrolling; None: full when ``max_steps <= UNROLL_MAX``, else none.
      per_step: optional pytree whose leaves carry a leading ``[max_steps]`` axis; iteration k
        then calls ``fn(z, params, slice_k)`` (a non-stationary map, e.g. the official per-call
        spectral normalisation). Only an unrolled solve can follow such a schedule.
    """

    unroll: bool | int | None = struct.field(pytree_node=False, default=None)
    per_step: PyTree | None = None

    def solve(self, fn, z0, params, *, max_steps, tol, method, batch_ndim, stop_ndim) -> Solution:
        if self.per_step is not None:
            lengths = {
                jnp.shape(a)[0] if jnp.ndim(a) else None for a in jax.tree.leaves(self.per_step)
            }
            if lengths != {max_steps}:
                raise ValueError(
                    f"Unrolled(per_step=...) needs a leading axis of max_steps = {max_steps} on "
                    f"every leaf, got lengths {sorted(lengths, key=str)}"
                )
        unroll = (max_steps <= UNROLL_MAX) if self.unroll is None else self.unroll

        def body(carry, step_params):
            z, state, steps, done = carry
            fz = fn(z, params) if step_params is None else fn(z, params, step_params)
            res = relative_step(fz, z, stop_ndim)
            z_new, state = method.update(z, fz, state, batch_ndim)
            if tol > 0:
                converged = res <= tol
                z_new = mask(done, mask(converged, z_new, fz), z)
                res = jnp.where(done, jnp.nan, res)
                steps = steps + jnp.where(done, 0, 1)
                done = done | converged
            else:
                steps = steps + 1
            return (z_new, state, steps, done), res

        stop = batch_shape(z0, stop_ndim)
        init = (
            z0,
            method.init(z0, batch_ndim),
            jnp.zeros(stop, jnp.int32),
            jnp.zeros(stop, bool),
        )
        (z, _, steps, _), residuals = jax.lax.scan(
            body, init, self.per_step, length=max_steps, unroll=unroll
        )
        residual = last_residual(residuals, steps)
        return Solution(z, residual, steps, residuals, status(residual, tol))


@pytree.dataclass
class Implicit:
    """Implicit-function-theorem gradients.

    Attributes:
      tol / max_steps: tolerance and cap of the adjoint solve (None: those of the forward solve).
      method: method of the adjoint solve (None: the forward solve's).
      report: called (through ``jax.debug.callback``) with ``{'steps', 'residual', 'status'}``
        of every adjoint solve.
    """

    tol: float | None = struct.field(pytree_node=False, default=None)
    max_steps: int | None = struct.field(pytree_node=False, default=None)
    method: Method | None = struct.field(pytree_node=False, default=None)
    report: Callable[[dict], None] | None = struct.field(pytree_node=False, default=None)

    def solve(self, fn, z0, params, *, max_steps, tol, method, batch_ndim, stop_ndim) -> Solution:
        forward = _Loop(method, max_steps, tol, batch_ndim, stop_ndim)
        backward = _Loop(
            method if self.method is None else self.method,
            max_steps if self.max_steps is None else self.max_steps,
            tol if self.tol is None else self.tol,
            batch_ndim,
            stop_ndim,
        )
        closed, consts = jax.closure_convert(fn, z0, params)
        z, steps, hist = _implicit_solve(
            _with_consts(closed), forward, backward, self.report, z0, (params, consts)
        )
        residual = last_residual(hist, steps)
        return Solution(z, residual, steps, hist, status(residual, tol))


@pytree.dataclass
class _Loop:
    """Settings of one ``while_loop`` solve (hashable: a static argument)."""

    method: Method = struct.field(pytree_node=False)
    max_steps: int = struct.field(pytree_node=False)
    tol: float = struct.field(pytree_node=False)
    batch_ndim: int = struct.field(pytree_node=False)
    stop_ndim: int = struct.field(pytree_node=False)

    def run(self, fn, z0, params):
        """Iteration without a tape: ``(z, steps, residual history)``, per problem."""
        nb, ns, tol, max_steps = (
            self.batch_ndim,
            self.stop_ndim,
            self.tol,
            self.max_steps,
        )
        stop = batch_shape(z0, ns)
        dtype = relative_step(z0, z0, ns).dtype
        index = jnp.arange(max_steps).reshape((-1,) + (1,) * ns)

        def cond(carry):
            _, _, steps, res, _ = carry
            return jnp.any((steps < max_steps) & (res > tol))

        def body(carry):
            z, state, steps, res, hist = carry
            active = (steps < max_steps) & (res > tol)
            fz = fn(z, params)
            new_res = relative_step(fz, z, ns)
            z_new, state = self.method.update(z, fz, state, nb)
            z_new = mask(new_res <= tol, z_new, fz)
            if ns:  # problems already done keep their state, steps and residual
                z_new = mask(~active, z_new, z)
                new_res = jnp.where(active, new_res, res)
                hist = jnp.where((index == steps) & active, new_res, hist)
                return z_new, state, steps + active.astype(jnp.int32), new_res, hist
            return z_new, state, steps + 1, new_res, hist.at[steps].set(new_res)

        init = (
            z0,
            self.method.init(z0, nb),
            jnp.zeros(stop, jnp.int32),
            jnp.full(stop, jnp.inf, dtype),
            jnp.full((max_steps, *stop), jnp.nan, dtype),
        )
        z, _, steps, _, hist = jax.lax.while_loop(cond, body, init)
        return z, steps, hist


def _with_consts(closed):
    def fn(z, params_and_consts):
        params, consts = params_and_consts
        return closed(z, params, *consts)

    return fn


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _implicit_solve(fn, forward, backward, report, z0, params):
    return forward.run(fn, z0, params)


def _implicit_fwd(fn, forward, backward, report, z0, params):
    z, steps, hist = forward.run(fn, z0, params)
    return (z, steps, hist), (z, params, z0)


def _implicit_bwd(fn, forward, backward, report, saved, cotangents):
    z, params, z0 = saved
    z_bar = cotangents[0]
    _, vjp_z = jax.vjp(lambda z_: fn(z_, params), z)

    def adjoint_map(w, _):  # w = z_bar + J_z^T w, solved by the same (contracting) iteration
        (jt_w,) = vjp_z(w)
        return jax.tree.map(jnp.add, z_bar, jt_w)

    w, steps, hist = backward.run(adjoint_map, z_bar, None)
    if report is not None:
        residual = last_residual(hist, steps)
        stats = {
            "steps": steps,
            "residual": residual,
            "status": status(residual, backward.tol),
        }
        jax.debug.callback(report, stats)
    _, vjp_p = jax.vjp(lambda p: fn(z, p), params)
    (params_bar,) = vjp_p(w)
    return jax.tree.map(jnp.zeros_like, z0), params_bar


_implicit_solve.defvjp(_implicit_fwd, _implicit_bwd)

Adjoint = Unrolled | Implicit
ADJOINTS = (Unrolled, Implicit)
