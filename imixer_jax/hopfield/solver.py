"""Fixed-point solver z* = f(z*, params) with unrolled or implicit (IFT) gradients.

``fixed_point`` returns a ``Solution`` (value, residual, steps, per-iteration residuals, status),
in the spirit of optimistix; the adjoint is a parameter:

* ``'unrolled'``: back-propagate through the iterations, exactly like the official iMixer FPA.
  With ``tol == 0`` it runs exactly ``max_steps`` iterations (``n_iter``); with ``tol > 0`` it
  still runs ``max_steps`` iterations under ``lax.scan`` (reverse-mode needs a fixed trip count)
  but freezes z once converged, so the value equals that of an early stop. Small step counts
  (``<= UNROLL_MAX``) are fully unrolled by default: a rolled loop of two steps cost three times
  one step on a GPU.
* ``'implicit'``: forward under ``lax.while_loop`` until the residual drops below ``tol`` (or
  ``max_steps``); the backward pass solves the adjoint fixed point w = zbar + J_f(z*)^T w by the
  same method, with its own ``adjoint_tol`` / ``adjoint_max_steps`` and an optional report of its
  residual, so memory does not grow with the number of steps. z0 receives no gradient. Arrays
  that ``fn`` closes over are hoisted by ``jax.closure_convert`` and receive their gradients.

The residual of iteration k is ||z_k - z_{k-1}|| / ||z_k||: the relative step size, free to
compute; over the whole state, or per sample (``batch_ndim`` leading axes index independent
problems: each sample then stops on its own residual, its state frozen once converged). The
``status`` says, per problem, ``CONVERGED`` (residual <= tol), ``MAX_STEPS`` (stopped by the cap;
always so with tol = 0) or ``DIVERGED`` (a non-finite iterate); ``throw=True`` raises on anything
but converged. Convergence is reported, never assumed.

``method='anderson'`` accelerates the iteration (Anderson mixing of the last ``anderson_memory``
iterates, per problem, regularised least squares).

Written by hand because the solver libraries (optimistix, jaxopt) are not among the project's
runtime dependencies and we need the official iteration's exact op order and a per-step
parameter hook; optimistix is the tests' oracle for the implicit gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from imixer_jax.hopfield import pytree

PyTree = Any
_TINY = 1e-30
UNROLL_MAX = 8  # the unrolled adjoint unrolls loops of at most this many steps by default
CONVERGED, MAX_STEPS, DIVERGED = 0, 1, 2
STATUS = ("converged", "max_steps", "diverged")
METHODS = ("picard", "anderson")


class NotConvergedError(RuntimeError):
    """Raised (through the runtime) by ``fixed_point(..., throw=True)``."""


@pytree.dataclass
class Solution:
    """Result of a fixed-point solve (``P`` = the problems' batch shape, ``()`` unless
    ``batch_ndim > 0``).

    Attributes:
      value: the last iterate z (same pytree structure and shapes as z0).
      residual: ``P``, relative step size of the last iteration (0 when no step was taken).
      steps: ``P`` int32, iterations performed (for ``'unrolled'`` with tol: until converged).
      residuals: ``[max_steps, *P]`` relative step size per iteration (NaN for those not run).
      status: ``P`` int32, ``CONVERGED``, ``MAX_STEPS`` or ``DIVERGED`` (names in ``STATUS``).
    """

    value: PyTree
    residual: jax.Array
    steps: jax.Array
    residuals: jax.Array
    status: jax.Array


def _sq_norm(tree: PyTree, batch_ndim: int) -> jax.Array:
    """Squared norm over every axis but the leading ``batch_ndim`` ones (summed over leaves)."""
    leaves = jax.tree.leaves(tree)
    # Accumulate in at least float32 (bfloat16 states), in float64 when the states are.
    return sum(
        jnp.sum(
            jnp.square(x.astype(jnp.promote_types(x.dtype, jnp.float32))),
            axis=tuple(range(batch_ndim, x.ndim)),
        )
        for x in leaves
    )


def relative_step(z_new: PyTree, z_old: PyTree, batch_ndim: int = 0) -> jax.Array:
    """||z_new - z_old|| / ||z_new|` over all leaves, per problem (shape: leading batch axes)."""
    diff = jax.tree.map(jnp.subtract, z_new, z_old)
    return jnp.sqrt(_sq_norm(diff, batch_ndim)) / jnp.maximum(
        jnp.sqrt(_sq_norm(z_new, batch_ndim)), _TINY
    )


def fixed_point(
    fn: Callable[..., PyTree],
    z0: PyTree,
    params: PyTree,
    *,
    max_steps: int,
    tol: float = 0.0,
    adjoint: str = "unrolled",
    per_step_params: PyTree | None = None,
    batch_ndim: int = 0,
    method: str = "picard",
    anderson_memory: int = 5,
    unroll: bool | int | None = None,
    throw: bool = False,
    adjoint_tol: float | None = None,
    adjoint_max_steps: int | None = None,
    adjoint_report: Callable[[dict], None] | None = None,
) -> Solution:
    """Iterates z <- fn(z, params) from z0.

    Args:
      fn: the map; ``fn(z, params)`` returns a pytree shaped like z.
      z0: initial iterate.
      params: what fn depends on and should receive gradients (arrays fn closes over are hoisted
        automatically for the implicit adjoint).
      max_steps: number of iterations (``n_iter``) or the cap when ``tol > 0``.
      tol: stop once the relative step size is <= tol (0: always run ``max_steps``).
      adjoint: ``'unrolled'`` or ``'implicit'``.
      per_step_params: optional pytree whose leaves carry a leading ``[max_steps]`` axis; iteration
        k then calls ``fn(z, params, slice_k)`` (a non-stationary map, e.g. the official per-call
        spectral normalisation). Only with ``adjoint='unrolled'`` and ``method='picard'``.
      batch_ndim: leading axes of every leaf of z that index independent problems (each stops on
        its own residual); 0: one problem.
      method: ``'picard'`` (plain iteration, the official one) or ``'anderson'``.
      anderson_memory: iterates mixed by Anderson acceleration.
      unroll: ``lax.scan`` unrolling of the unrolled adjoint; None: full when
        ``max_steps <= UNROLL_MAX``, else none.
      throw: raise ``NotConvergedError`` (at run time) unless every problem converged.
      adjoint_tol / adjoint_max_steps: tolerance and cap of the implicit adjoint solve (default:
        ``tol`` and ``max_steps``).
      adjoint_report: called (through ``jax.debug.callback``) with ``{'steps', 'residual',
        'status'}`` of every implicit adjoint solve.
    """
    if max_steps < 0:
        raise ValueError(f"max_steps must be >= 0, got {max_steps}")
    if adjoint not in ("unrolled", "implicit"):
        raise ValueError(f"adjoint must be 'unrolled' or 'implicit', got {adjoint!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if per_step_params is not None and (adjoint != "unrolled" or method != "picard"):
        raise ValueError(
            "per_step_params needs adjoint='unrolled' and method='picard' (the map must be "
            "stationary otherwise)"
        )
    if method == "anderson" and anderson_memory < 2:
        raise ValueError(f"anderson_memory must be >= 2, got {anderson_memory}")
    options = _Options(batch_ndim, method, anderson_memory)
    if adjoint == "unrolled":
        unroll = (max_steps <= UNROLL_MAX) if unroll is None else unroll
        solution = _unrolled(fn, z0, params, max_steps, tol, per_step_params, options, unroll)
    else:
        backward = _Backward(
            tol if adjoint_tol is None else adjoint_tol,
            max_steps if adjoint_max_steps is None else adjoint_max_steps,
            adjoint_report,
        )
        solution = _implicit(fn, z0, params, max_steps, tol, options, backward)
    if throw:
        jax.debug.callback(_raise_unless_converged, solution.status, solution.residual)
    return solution


@pytree.dataclass
class _Options:
    batch_ndim: int = struct.field(pytree_node=False)
    method: str = struct.field(pytree_node=False)
    memory: int = struct.field(pytree_node=False)


@pytree.dataclass
class _Backward:
    tol: float = struct.field(pytree_node=False)
    max_steps: int = struct.field(pytree_node=False)
    report: Callable | None = struct.field(pytree_node=False)


def _raise_unless_converged(status, residual) -> None:
    status = jax.device_get(status)
    if (status != CONVERGED).any():
        worst = STATUS[int(status.max())]
        raise NotConvergedError(
            f"fixed point not reached ({worst}, residual {jax.device_get(residual).max():.3g}): "
            "raise max_steps or tol, or lower the map's Lipschitz constant"
        )


def _status(residual: jax.Array, tol: float) -> jax.Array:
    converged = residual <= tol if tol > 0 else jnp.zeros_like(residual, bool)
    code = jnp.where(converged, CONVERGED, MAX_STEPS)
    return jnp.where(jnp.isfinite(residual), code, DIVERGED).astype(jnp.int32)


def _mask(done: jax.Array, new: PyTree, old: PyTree) -> PyTree:
    """Per problem: ``old`` where done, else ``new``."""

    def pick(a, b):
        d = done.reshape(done.shape + (1,) * (a.ndim - done.ndim))
        return jnp.where(d, b, a)

    return jax.tree.map(pick, new, old)


# ---------------------------------------------------------------------------------------------
# Anderson acceleration on the per-problem flattened state.


def _flat(tree: PyTree, batch_ndim: int) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    batch = jnp.shape(leaves[0])[:batch_ndim]
    return jnp.concatenate([x.reshape(batch + (-1,)) for x in leaves], axis=-1)


def _unflat(flat: jax.Array, like: PyTree, batch_ndim: int) -> PyTree:
    leaves, treedef = jax.tree.flatten(like)
    out, start = [], 0
    for x in leaves:
        size = math.prod(x.shape[batch_ndim:])
        out.append(flat[..., start : start + size].reshape(x.shape).astype(x.dtype))
        start += size
    return jax.tree.unflatten(treedef, out)


def _anderson_init(z0: PyTree, options: _Options):
    flat = _flat(z0, options.batch_ndim)
    history = jnp.zeros((options.memory, *flat.shape), flat.dtype)
    return history, history, jnp.zeros((), jnp.int32)  # iterates, map values, count


def _anderson_step(fn_z, z: PyTree, state, options: _Options):
    """One Anderson-mixed step: (new z, new state). ``fn_z`` is the map at fixed params."""
    xs, fs, count = state
    m = options.memory
    f = fn_z(z)
    slot = count % m
    xs = xs.at[slot].set(_flat(z, options.batch_ndim))
    fs = fs.at[slot].set(_flat(f, options.batch_ndim))
    valid = jnp.arange(m) < jnp.minimum(count + 1, m)  # [m]
    g = jnp.moveaxis(fs - xs, 0, -2)  # [*P, m, n] residuals of the stored iterates
    gram = g @ jnp.swapaxes(g, -1, -2)  # [*P, m, m]
    scale = jnp.maximum(jnp.max(jnp.abs(gram), axis=(-1, -2), keepdims=True), _TINY)
    eye = jnp.eye(m, dtype=gram.dtype)
    both = valid[:, None] & valid[None, :]
    # Minimise ||sum_i a_i g_i|| subject to sum_i a_i = 1 over the valid slots (Lagrange system,
    # lightly regularised; invalid slots get a_i = 0).
    gram = jnp.where(both, gram / scale + 1e-8 * eye, eye)
    ones = jnp.broadcast_to(valid.astype(gram.dtype), gram.shape[:-1])  # [*P, m]
    corner = jnp.zeros(gram.shape[:-2] + (1, 1), gram.dtype)
    system = jnp.concatenate(
        [
            jnp.concatenate([corner, ones[..., None, :]], axis=-1),
            jnp.concatenate([ones[..., :, None], gram], axis=-1),
        ],
        axis=-2,
    )  # [*P, m + 1, m + 1]
    rhs = jnp.zeros(system.shape[:-1], gram.dtype).at[..., 0].set(1.0)
    alpha = jnp.linalg.solve(system, rhs[..., None])[..., 1:, 0]  # [*P, m]
    mixed = jnp.einsum("...m,m...n->...n", alpha, fs)
    return _unflat(mixed, z, options.batch_ndim), (xs, fs, count + 1)


def _stepper(fn, params, options: _Options):
    """(init, step) of the chosen method for the map at fixed params."""
    if options.method == "picard":
        return (lambda z0: None), (lambda z, state: (fn(z, params), None))

    def fn_z(z):
        return fn(z, params)

    return (lambda z0: _anderson_init(z0, options)), partial(_anderson_step, fn_z, options=options)


# ---------------------------------------------------------------------------------------------
# Unrolled adjoint.


def _unrolled(fn, z0, params, max_steps, tol, per_step_params, options, unroll) -> Solution:
    nb = options.batch_ndim
    init_state, step = _stepper(fn, params, options)

    def body(carry, step_params):
        z, state, steps, done = carry
        if step_params is None:
            z_new, state = step(z, state)
        else:
            z_new = fn(z, params, step_params)
        res = relative_step(z_new, z, nb)
        if tol > 0:
            z_new = _mask(done, z_new, z)
            res = jnp.where(done, jnp.nan, res)
            steps = steps + jnp.where(done, 0, 1)
            done = done | (res <= tol)
        else:
            steps = steps + 1
        return (z_new, state, steps, done), res

    batch = jnp.shape(jax.tree.leaves(z0)[0])[:nb]
    init = (z0, init_state(z0), jnp.zeros(batch, jnp.int32), jnp.zeros(batch, bool))
    (z, _, steps, _), residuals = jax.lax.scan(
        body, init, per_step_params, length=max_steps, unroll=unroll
    )
    residual = _last_residual(residuals, steps, batch)
    return Solution(z, residual, steps, residuals, _status(residual, tol))


def _last_residual(residuals: jax.Array, steps: jax.Array, batch: tuple[int, ...]) -> jax.Array:
    if residuals.shape[0] == 0:
        return jnp.zeros(batch, jnp.float32)
    index = jnp.maximum(steps - 1, 0)[None]
    last = jnp.take_along_axis(residuals, index, axis=0)[0]
    return jnp.where(steps > 0, last, 0.0)


# ---------------------------------------------------------------------------------------------
# Implicit adjoint.


def _forward_loop(fn, z0, params, max_steps, tol, options):
    """while_loop iteration without a tape: (z, steps, residual history), per problem."""
    nb = options.batch_ndim
    batch = jnp.shape(jax.tree.leaves(z0)[0])[:nb]
    dtype = relative_step(z0, z0, nb).dtype
    history0 = jnp.full((max_steps, *batch), jnp.nan, dtype)
    init_state, step = _stepper(fn, params, options)

    def cond(carry):
        _, _, steps, res, _ = carry
        return jnp.any((steps < max_steps) & (res > tol))

    def body(carry):
        z, state, steps, res, hist = carry
        active = (steps < max_steps) & (res > tol)
        z_new, state = step(z, state)
        new_res = relative_step(z_new, z, nb)
        if nb:  # problems already done keep their state, steps and residual
            z_new = _mask(~active, z_new, z)
            new_res = jnp.where(active, new_res, res)
            hist = jnp.where(
                jnp.arange(max_steps).reshape((-1,) + (1,) * nb) == steps, new_res, hist
            )
            return z_new, state, steps + active.astype(jnp.int32), new_res, hist
        return z_new, state, steps + 1, new_res, hist.at[steps].set(new_res)

    init = (
        z0,
        init_state(z0),
        jnp.zeros(batch, jnp.int32),
        jnp.full(batch, jnp.inf, dtype),
        history0,
    )
    z, _, steps, _, hist = jax.lax.while_loop(cond, body, init)
    return z, steps, hist


def _implicit(fn, z0, params, max_steps, tol, options, backward) -> Solution:
    closed, consts = jax.closure_convert(fn, z0, params)
    z, steps, hist = _implicit_solve(
        _with_consts(closed), max_steps, tol, options, backward, z0, (params, consts)
    )
    batch = jnp.shape(jax.tree.leaves(z0)[0])[: options.batch_ndim]
    residual = _last_residual(hist, steps, batch)
    return Solution(z, residual, steps, hist, _status(residual, tol))


def _with_consts(closed):
    def fn(z, params_and_consts):
        params, consts = params_and_consts
        return closed(z, params, *consts)

    return fn


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4))
def _implicit_solve(fn, max_steps, tol, options, backward, z0, params):
    return _forward_loop(fn, z0, params, max_steps, tol, options)


def _implicit_fwd(fn, max_steps, tol, options, backward, z0, params):
    z, steps, hist = _forward_loop(fn, z0, params, max_steps, tol, options)
    return (z, steps, hist), (z, params, z0)


def _implicit_bwd(fn, max_steps, tol, options, backward, saved, cotangents):
    z, params, z0 = saved
    z_bar = cotangents[0]
    _, vjp_z = jax.vjp(lambda z_: fn(z_, params), z)

    # Adjoint fixed point w = z_bar + J_z^T w, solved by the same (contracting) iteration.
    def adjoint_map(w, _):
        (jt_w,) = vjp_z(w)
        return jax.tree.map(jnp.add, z_bar, jt_w)

    w, steps, hist = _forward_loop(
        adjoint_map, z_bar, None, backward.max_steps, backward.tol, options
    )
    if backward.report is not None:
        batch = jnp.shape(jax.tree.leaves(z_bar)[0])[: options.batch_ndim]
        residual = _last_residual(hist, steps, batch)
        report = {"steps": steps, "residual": residual, "status": _status(residual, backward.tol)}
        jax.debug.callback(backward.report, report)
    _, vjp_p = jax.vjp(lambda p: fn(z, p), params)
    (params_bar,) = vjp_p(w)
    z0_bar = jax.tree.map(jnp.zeros_like, z0)
    return z0_bar, params_bar


_implicit_solve.defvjp(_implicit_fwd, _implicit_bwd)
