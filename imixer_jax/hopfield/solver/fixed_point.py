"""``fixed_point``: the one entry point of the solver; ``check``: its host-side convergence test."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from imixer_jax.hopfield.solver.adjoints import ADJOINTS, Adjoint, Unrolled
from imixer_jax.hopfield.solver.methods import METHODS, Method, Picard
from imixer_jax.hopfield.solver.solution import CONVERGED, STATUS, Solution

PyTree = Any
_FIX = "raise max_steps or tol, or lower the map's Lipschitz constant"


class NotConvergedError(RuntimeError):
    """Raised by ``fixed_point(..., throw=True)`` and ``check`` unless every problem converged."""


def fixed_point(
    fn: Callable[..., PyTree],
    z0: PyTree,
    params: PyTree,
    *,
    max_steps: int,
    tol: float = 0.0,
    method: Method = Picard(),
    adjoint: Adjoint = Unrolled(),
    batch_ndim: int = 0,
    per_sample: bool = True,
    throw: bool = False,
) -> Solution:
    """Iterates z <- fn(z, params) from z0 by ``method``, differentiated by ``adjoint``.

    Args:
      fn: the map; ``fn(z, params)`` returns a pytree shaped like z (``fn(z, params, slice_k)``
        under ``Unrolled(per_step=...)``).
      z0: initial iterate.
      params: what fn depends on and should receive gradients (arrays fn closes over are hoisted
        automatically by the implicit adjoint).
      max_steps: number of iterations (``n_iter``) or the cap when ``tol > 0``.
      tol: stop once the relative residual ||f(z) - z|| / ||f(z)|| is <= tol (0: always run
        ``max_steps``).
      method: ``Picard()`` or ``Anderson(memory, regularisation, safeguard)``.
      adjoint: ``Unrolled(unroll, per_step)`` or ``Implicit(tol, max_steps, method, report)``.
      batch_ndim: leading axes of every leaf of z that index independent problems (each mixed
        with its own coefficients); 0: one problem.
      per_sample: each problem stops on its own residual (its state frozen once converged);
        False: all stop together, on one residual over the whole batch.
      throw: raise ``NotConvergedError`` unless every problem converged. Called eagerly, the
        test runs on the host after the solve; under ``jax.jit`` it is a ``checkify.check``, so
        wrap the jitted function in ``checkify.checkify`` and call ``err.throw()``.
    """
    if not isinstance(max_steps, numbers.Integral) or max_steps < 0:
        raise ValueError(f"max_steps must be an integer >= 0, got {max_steps!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    if not isinstance(method, METHODS):
        raise TypeError(f"method must be Picard() or Anderson(...), got {method!r}")
    if not isinstance(adjoint, ADJOINTS):
        raise TypeError(f"adjoint must be Unrolled(...) or Implicit(...), got {adjoint!r}")
    ndim = min(jnp.ndim(x) for x in jax.tree.leaves(z0))
    if not 0 <= batch_ndim <= ndim:
        raise ValueError(f"batch_ndim must be in [0, {ndim}] for these states, got {batch_ndim}")
    solution = adjoint.solve(
        fn,
        z0,
        params,
        max_steps=max_steps,
        tol=tol,
        method=method,
        batch_ndim=batch_ndim,
        stop_ndim=batch_ndim if per_sample else 0,
    )
    if throw:
        if isinstance(solution.status, jax.core.Tracer):
            checkify.check(
                jnp.all(solution.status == CONVERGED),
                f"fixed point not reached (worst residual {{r}}, tol {tol:g}): {_FIX}",
                r=jnp.max(solution.residual),
            )
        else:
            check(solution)
    return solution


def check(solution: Solution) -> None:
    """Raise a one-line ``NotConvergedError`` unless every problem of a (concrete) solution
    converged, e.g. on the result of a jitted solve."""
    status = np.asarray(solution.status)
    if (status != CONVERGED).any():
        residual = float(np.max(np.asarray(solution.residual)))
        raise NotConvergedError(
            f"fixed point not reached ({STATUS[int(status.max())]}, worst residual "
            f"{residual:.3g}): {_FIX}"
        )
