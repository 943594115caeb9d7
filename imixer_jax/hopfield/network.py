"""The hierarchical Hopfield network (HHN): a chain of layers, a thin constructor of the graph.

Layer A (0-based; layer 0 is the visible layer) and synapse A between layers A and A+1 become the
graph's layers ``layer_A`` and ``Dense`` synapses ``synapse_A``; every method converts the
tuple-of-states interface to the graph's ``{name: state}`` and back. Synapses default to acting on
the **last axis**, shared over the others (``spec='...i,io->...o'``): a token-matrix layer stored
channels-first, ``shape = (D, S)``, is then mixed along S for every channel. Synapse A is a
``Dense(weight, feedback, forward_bias, feedback_bias)`` (weight ``[n_A, n_{A+1}]``, feedback
``[n_{A+1}, n_A]`` or None for tied).
"""

from __future__ import annotations

import jax

from imixer_jax.hopfield import pytree, reduction
from imixer_jax.hopfield import solver as solver_lib
from imixer_jax.hopfield.graph import Layer, Network
from imixer_jax.hopfield.solver import Adjoint, Unrolled
from imixer_jax.hopfield.synapses import Dense

Array = jax.Array
States = tuple[Array, ...]


def _names(n: int) -> tuple[str, ...]:
    return tuple(f"layer_{a}" for a in range(n))


@pytree.dataclass
class HierarchicalNetwork:
    """An ordered chain of layers coupled by neighbour synapses (``len(synapses) == N - 1``)."""

    layers: tuple[Layer, ...]
    synapses: tuple[Dense, ...]

    def __post_init__(self):
        if len(self.synapses) != len(self.layers) - 1:
            raise ValueError(
                f"a network of {len(self.layers)} layers needs {len(self.layers) - 1} synapses, "
                f"got {len(self.synapses)}; for other topologies build a hopfield.Network"
            )

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def tied(self) -> bool:
        return all(s.tied for s in self.synapses)

    def graph(self, *, check: bool = True) -> Network:
        """The same network as a graph (``check=False`` skips the shape checks, for copies whose
        arrays carry extra leading axes)."""
        names = _names(self.num_layers)
        layers = dict(zip(names, self.layers))
        synapses = {
            f"synapse_{a}": s.replace(pre=names[a], post=names[a + 1])
            for a, s in enumerate(self.synapses)
        }
        if check:
            return Network(layers, synapses)
        return Network.unchecked(layers, synapses)

    def _dict(self, xs: States) -> dict[str, Array]:
        return dict(zip(_names(len(xs)), xs))

    def _tuple(self, xs: dict[str, Array]) -> States:
        return tuple(xs[n] for n in _names(self.num_layers))

    # ----------------------------------------------------------------------------------------
    # Activations, currents, dynamics, energy, descent (see ``graph.Network``).

    def activations(self, xs: States) -> States:
        return self._tuple(self.graph().activations(self._dict(xs)))

    def currents(self, xs: States) -> States:
        """Total drive I_A into every layer, each shaped like ``xs[A]``."""
        return self._tuple(self.graph().currents(self._dict(xs)))

    def dynamics(self, xs: States) -> States:
        """dx_A/dt = (I_A - x_A) / tau_A for every layer."""
        return self._tuple(self.graph().dynamics(self._dict(xs)))

    def energy_terms(self, xs: States) -> dict[str, dict[str, Array]]:
        """``{'neurons': {'layer_A'}, 'synapses': {'synapse_A'}, 'biases': {'layer_A'}}``, each
        of shape ``batch``; a synapse's term includes its biases. Tied synapses only."""
        return self.graph().energy_terms(self._dict(xs))

    def energy(self, xs: States) -> Array:
        """Total energy, shape ``batch``."""
        return self.graph().energy(self._dict(xs))

    def descend(
        self, xs0: States, *, dt: float, num_steps: int, return_states: bool = False
    ) -> tuple[Array, States | None, States]:
        """Euler descent under ``lax.scan``: ``(energies [num_steps + 1, *batch], states or
        None, final)`` (see ``Network.descend``)."""
        energies, states, final = self.graph().descend(
            self._dict(xs0), dt=dt, num_steps=num_steps, return_states=return_states
        )
        return (
            energies,
            None if states is None else self._tuple(states),
            self._tuple(final),
        )

    def integrate(self, xs0: States, *, dt: float, num_steps: int) -> States:
        """Explicit Euler integration without energies (valid for untied networks too)."""
        return self._tuple(self.graph().integrate(self._dict(xs0), dt=dt, num_steps=num_steps))

    # ----------------------------------------------------------------------------------------
    # Adiabatic reduction: layer 0 slow, layers 1..N-1 fast.

    def solve_fast_layers(
        self, x0: Array, *, adjoint: Adjoint = Unrolled(), **solve
    ) -> tuple[States, solver_lib.Solution | None]:
        """States of layers 1..N-1 at their fixed point for the visible state x0, and the
        solver's ``Solution`` (None for N = 2, which is closed form).

        ``max_steps = n_iter`` with ``tol = 0`` is the official FPA z <- u + F(z) from z = u.
        ``adjoint=Unrolled(per_step=copy)`` takes a copy of this network whose arrays carry a
        leading ``[max_steps]`` axis (iteration k uses slice k), for the official per-call
        spectral norm. Other keywords go to ``reduction.solve_fast`` (max_steps, tol, method,
        per_sample, throw, recompute).
        """
        if isinstance(adjoint, Unrolled) and adjoint.per_step is not None:
            adjoint = adjoint.replace(per_step=adjoint.per_step.graph(check=False))
        fast, solution = reduction.solve_fast(
            self.graph(), {"layer_0": x0}, adjoint=adjoint, **solve
        )
        return self._tuple({"layer_0": x0, **fast})[1:], solution

    def reduced_current(self, x0: Array, fast: States, *, recompute: bool = False) -> Array:
        """Visible-layer drive at the fast states: fb_0(g_1(x_1*)) + b_0 (shaped like x0);
        ``recompute`` as in ``reduction.solve_fast``."""
        names = _names(self.num_layers)
        visible, fast = {"layer_0": x0}, dict(zip(names[1:], fast))
        currents = reduction.reduced_currents(self.graph(), visible, fast, recompute=recompute)
        return currents["layer_0"]

    def reduced_energy(self, x0: Array, fast: States) -> Array:
        """E~(x0) = E(x0, x_1*, ..., x_{N-1}*), shape ``batch``."""
        return self.energy((x0, *fast))
