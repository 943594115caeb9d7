"""Fixed-point solver z* = f(z*, params), in the style of optimistix: the iteration ``method`` and
the ``adjoint`` (how gradients flow) are values passed to one function, ``fixed_point``, which
returns a ``Solution`` (value, residual, steps, per-iteration residuals, status).

Methods (``methods``): ``Picard()`` (plain iteration z <- f(z), the official iMixer FPA) and
``Anderson(memory, regularisation, safeguard)`` (Anderson mixing of the last iterates).
Adjoints (``adjoints``): ``Unrolled(unroll, per_step)`` (back-propagate through the iterations;
``per_step`` gives iteration k its own parameters, a non-stationary map) and ``Implicit(tol,
max_steps, method, report)`` (implicit-function-theorem gradients, by a fixed-point solve of the
adjoint system with its own settings). Settings live in the value they belong to, so no invalid
combination can be written down.

The residual of an iterate z is ||f(z) - z|| / ||f(z)||, per problem (``batch_ndim`` leading axes
index independent problems, each with its own mixing coefficients). By default each problem stops
on its own residual (its state frozen once converged); ``per_sample=False`` stops all of them on
one residual over the whole batch. Convergence is reported (``Solution.status``), never assumed;
``throw=True`` raises ``NotConvergedError``.

Written by hand because the solver libraries (optimistix, jaxopt) are not among the project's
runtime dependencies and we need the official iteration's exact op order and a per-step
parameter hook; optimistix is the tests' oracle for the implicit gradients.
"""

from imixer_jax.hopfield.solver.adjoints import UNROLL_MAX, Adjoint, Implicit, Unrolled
from imixer_jax.hopfield.solver.fixed_point import NotConvergedError, check, fixed_point
from imixer_jax.hopfield.solver.methods import Anderson, Method, Picard
from imixer_jax.hopfield.solver.solution import (
    CONVERGED,
    DIVERGED,
    MAX_STEPS,
    STATUS,
    Solution,
    relative_step,
)

__all__ = [
    "CONVERGED",
    "DIVERGED",
    "MAX_STEPS",
    "STATUS",
    "UNROLL_MAX",
    "Adjoint",
    "Anderson",
    "Implicit",
    "Method",
    "NotConvergedError",
    "Picard",
    "Solution",
    "Unrolled",
    "check",
    "fixed_point",
    "relative_step",
]
