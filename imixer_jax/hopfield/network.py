"""The hierarchical Hopfield network (HHN): layers, synapses, energy, dynamics, energy descent and
the adiabatic reduction to the visible layer (SPEC sections 1-2).

Conventions
-----------
* Layer A (0-based here; layer 0 is the visible layer) has a state ``x_A`` of shape
  ``[*batch, *shape_A]``, a Lagrangian ``L_A`` with activation ``g_A = dL_A/dx_A``, a time constant
  ``tau_A`` and an optional external current ``bias`` broadcastable to ``shape_A``.
* Synapses act on the **last axis** and are shared over all other axes. A token-matrix layer is
  therefore stored channels-first, ``shape = (D, S)``: a synapse contracts the token axis S and is
  shared by the D channels, which is exactly token mixing.
* ``Synapse.weight`` has shape ``[n_A, n_{A+1}]`` (the Flax kernel convention; it is xi_A^T in
  SPEC's notation): the feedforward current into layer A+1 is ``g_A @ weight + forward_bias``. The
  feedback current into layer A is ``g_{A+1} @ feedback + feedback_bias`` with ``feedback = None``
  meaning tied (``weight.T``, symmetric coupling: the energy exists). Untied synapses break the
  symmetry (the paper's trained models); then dynamics are defined but the energy is not.

Drive into layer A: I_A = ff_{A-1}(g_{A-1}) + fb_A(g_{A+1}) + b_A;  tau_A dx_A/dt = I_A - x_A.
Energy: E = sum_A [<x_A, g_A> - L_A(x_A)] - sum_A <g_{A+1}, xi_A g_A> - sum_A <b_A^eff, g_A>, with
b_A^eff the sum of every bias that flows into layer A.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from math import prod

import jax
import jax.numpy as jnp
from flax import struct

from imixer_jax.hopfield import solver as solver_lib
from imixer_jax.hopfield.lagrangians import Lagrangian

Array = jax.Array
States = tuple[Array, ...]


@struct.dataclass
class Layer:
    """A layer of neurons: Lagrangian, state shape (without batch axes), time constant, bias."""

    lagrangian: Lagrangian
    shape: tuple[int, ...] = struct.field(pytree_node=False)
    tau: float = struct.field(pytree_node=False, default=1.0)
    bias: Array | None = None


@struct.dataclass
class Synapse:
    """Coupling between layers A and A+1 (acts on the last axis).

    Attributes:
      weight: ``[n_A, n_{A+1}]`` feedforward matrix.
      feedback: ``[n_{A+1}, n_A]`` feedback matrix, or None for tied (``weight.T``).
      forward_bias: ``[n_{A+1}]`` bias of the feedforward current, or None.
      feedback_bias: ``[n_A]`` bias of the feedback current, or None.
    """

    weight: Array
    feedback: Array | None = None
    forward_bias: Array | None = None
    feedback_bias: Array | None = None

    @property
    def tied(self) -> bool:
        return self.feedback is None

    def forward(self, g: Array) -> Array:
        """``[..., n_A] -> [..., n_{A+1}]``."""
        out = g @ self.weight
        return out if self.forward_bias is None else out + self.forward_bias

    def backward(self, g_next: Array) -> Array:
        """``[..., n_{A+1}] -> [..., n_A]``."""
        w = self.weight.T if self.feedback is None else self.feedback
        out = g_next @ w
        return out if self.feedback_bias is None else out + self.feedback_bias


def _add(*terms: Array | None) -> Array | None:
    present = [t for t in terms if t is not None]
    if not present:
        return None
    out = present[0]
    for t in present[1:]:
        out = out + t
    return out


@struct.dataclass
class HierarchicalNetwork:
    """An ordered chain of layers coupled by neighbour synapses (``len(synapses) == N - 1``)."""

    layers: tuple[Layer, ...]
    synapses: tuple[Synapse, ...]

    def __post_init__(self):
        if len(self.synapses) != len(self.layers) - 1:
            raise ValueError(
                f"a network of {len(self.layers)} layers needs {len(self.layers) - 1} synapses, "
                f"got {len(self.synapses)}"
            )

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def tied(self) -> bool:
        return all(s.tied for s in self.synapses)

    # ----------------------------------------------------------------------------------------
    # Activations, currents, dynamics.

    def activations(self, xs: States) -> States:
        return tuple(layer.lagrangian.activation(x) for layer, x in zip(self.layers, xs))

    def currents(self, xs: States) -> States:
        """Total drive I_A into every layer, each shaped like ``xs[A]``."""
        gs = self.activations(xs)
        out = []
        for a, layer in enumerate(self.layers):
            below = self.synapses[a - 1].forward(gs[a - 1]) if a > 0 else None
            above = self.synapses[a].backward(gs[a + 1]) if a < self.num_layers - 1 else None
            total = _add(below, above, layer.bias)
            out.append(jnp.zeros_like(xs[a]) if total is None else total)
        return tuple(out)

    def dynamics(self, xs: States) -> States:
        """dx_A/dt = (I_A - x_A) / tau_A for every layer."""
        return tuple((i - x) / layer.tau for i, x, layer in zip(self.currents(xs), xs, self.layers))

    # ----------------------------------------------------------------------------------------
    # Energy.

    def _effective_biases(self) -> tuple[Array | None, ...]:
        out = []
        for a, layer in enumerate(self.layers):
            from_below = self.synapses[a - 1].forward_bias if a > 0 else None
            from_above = self.synapses[a].feedback_bias if a < self.num_layers - 1 else None
            out.append(_add(layer.bias, from_below, from_above))
        return tuple(out)

    def _sample_energy_terms(self, xs: States) -> dict[str, dict[str, Array]]:
        """Energy terms of one sample (states without batch axes)."""
        gs = self.activations(xs)
        neurons = {
            f"layer_{a}": jnp.vdot(x, g) - layer.lagrangian(x)
            for a, (layer, x, g) in enumerate(zip(self.layers, xs, gs))
        }
        synapses = {
            f"synapse_{a}": -jnp.vdot(gs[a + 1], gs[a] @ s.weight)
            for a, s in enumerate(self.synapses)
        }
        biases = {
            f"layer_{a}": -jnp.sum(b * g)
            for a, (b, g) in enumerate(zip(self._effective_biases(), gs))
            if b is not None
        }
        return {"neurons": neurons, "synapses": synapses, "biases": biases}

    def energy_terms(self, xs: States) -> dict[str, dict[str, Array]]:
        """Named tree of energy terms, each of shape ``batch`` (the states' leading axes).

        ``{'neurons': {'layer_A': <x_A,g_A> - L_A}, 'synapses': {'synapse_A': -<g_{A+1}, xi_A g_A>},
        'biases': {'layer_A': -<b_A, g_A>}}``. Defined only for tied synapses.
        """
        if not self.tied:
            raise ValueError(
                "the energy exists only for tied (symmetric) synapses; build the network with "
                "tied=True to evaluate it"
            )
        return _per_sample(self._sample_energy_terms, self.layers, xs)

    def energy(self, xs: States) -> Array:
        """Total energy, shape ``batch``."""
        return sum(jax.tree.leaves(self.energy_terms(xs)))

    # ----------------------------------------------------------------------------------------
    # Energy descent.

    def descend(
        self, xs0: States, *, dt: float, num_steps: int, return_states: bool = False
    ) -> tuple[Array, States | None, States]:
        """Explicit Euler integration of the dynamics under ``lax.scan``.

        Returns ``(energies, states, final)``: energies ``[num_steps + 1, *batch]`` (the energy at
        every visited state, initial included; requires tied synapses), states (each
        ``[num_steps + 1, *batch, *shape_A]``) when ``return_states`` else None, and the final
        states. Use ``integrate`` for untied networks, which have no energy.
        """
        final, (energies, states) = _euler_scan(self, xs0, dt, num_steps, True, return_states)
        return energies, states, final

    def integrate(self, xs0: States, *, dt: float, num_steps: int) -> States:
        """Explicit Euler integration without energies (valid for untied networks too)."""
        final, _ = _euler_scan(self, xs0, dt, num_steps, False, False)
        return final

    # ----------------------------------------------------------------------------------------
    # Adiabatic reduction (SPEC section 2): layers 1..N-1 fast, layer 0 slow.

    def feedforward_drive(self, g0: Array) -> Array | None:
        """Constant drive u of layer 1 from the (frozen) visible activation g0."""
        if self.num_layers < 2:
            return None
        return self.synapses[0].forward(g0)

    def sweep(self, fast: States, u: Array) -> States:
        """One top-down Gauss-Seidel sweep over the fast layers 1..N-2 (layer N-1 solved exactly).

        ``fast`` holds the states of layers 1..N-2; ``u`` is layer 1's drive from the visible layer.
        For N = 3 this is the official iMLP iteration z <- u + F(z),
        F(z) = fb_1(g_2(ff_1(g_1(z)))). Returns the new states of layers 1..N-2.
        """
        n = self.num_layers
        old = (None, *fast)
        new: dict[int, Array] = {}
        top = n - 1
        new[top] = _add(
            self.synapses[top - 1].forward(self._act(top - 1, old[top - 1])), self.layers[top].bias
        )
        for a in range(n - 2, 0, -1):
            below = u if a == 1 else self.synapses[a - 1].forward(self._act(a - 1, old[a - 1]))
            above = self.synapses[a].backward(self.layers[a + 1].lagrangian.activation(new[a + 1]))
            new[a] = _add(below, above, self.layers[a].bias)
        return tuple(new[a] for a in range(1, n - 1))

    def _act(self, a: int, x: Array) -> Array:
        return self.layers[a].lagrangian.activation(x)

    def complete_fast_states(self, fast: States, u: Array) -> States:
        """States of all fast layers 1..N-1 from those of layers 1..N-2 (top layer exact)."""
        n = self.num_layers
        if n == 2:
            return (_add(u, self.layers[1].bias),)
        top_input = self._act(n - 2, fast[-1])
        top = _add(self.synapses[n - 2].forward(top_input), self.layers[n - 1].bias)
        return (*fast, top)

    def solve_fast_layers(
        self,
        x0: Array,
        *,
        max_steps: int,
        tol: float = 0.0,
        adjoint: str = "unrolled",
        per_step: HierarchicalNetwork | None = None,
    ) -> tuple[States, solver_lib.Solution | None]:
        """Fast layers at their fixed point for the visible state x0.

        Iterates ``sweep`` from layer 1 = u (feedforward drive), all higher layers driven from
        below, so that ``max_steps = n_iter`` reproduces the official FPA. ``per_step`` is an
        optional copy of this network whose arrays carry a leading ``[max_steps]`` axis (iteration
        k uses slice k; unrolled adjoint only), used for the official per-call spectral norm.

        Returns the states of layers 1..N-1 and the solver's ``Solution`` (None for N = 2, which
        is closed form).
        """
        g0 = self._act(0, x0)
        u = self.feedforward_drive(g0)
        if self.num_layers == 2:
            return self.complete_fast_states((), u), None
        fast0 = [_add(u, self.layers[1].bias)]
        for a in range(2, self.num_layers - 1):
            fast0.append(
                _add(self.synapses[a - 1].forward(self._act(a - 1, fast0[-1])), self.layers[a].bias)
            )
        solution = solver_lib.fixed_point(
            _sweep_fn,
            tuple(fast0),
            (self, u),
            max_steps=max_steps,
            tol=tol,
            adjoint=adjoint,
            per_step_params=per_step,
        )
        return self.complete_fast_states(solution.value, u), solution

    def reduced_current(self, x0: Array, fast: States) -> Array:
        """Visible-layer drive at the fast fixed point: fb_0(g_1(x_1*)) + b_0 (shaped like x0)."""
        out = _add(self.synapses[0].backward(self._act(1, fast[0])), self.layers[0].bias)
        return jnp.zeros_like(x0) if out is None else out

    def reduced_energy(self, x0: Array, fast: States) -> Array:
        """E~(x0) = E(x0, x_1*, ..., x_{N-1}*), shape ``batch``."""
        return self.energy((x0, *fast))


def _sweep_fn(fast: States, params: tuple[HierarchicalNetwork, Array], step_net=None) -> States:
    net, u = params
    return (net if step_net is None else step_net).sweep(fast, u)


def _per_sample(fn, layers: Sequence[Layer], xs: States):
    """Applies a per-sample function over the leading batch axes of the states."""
    batch = xs[0].shape[: xs[0].ndim - len(layers[0].shape)]
    flat = tuple(x.reshape((prod(batch), *layer.shape)) for x, layer in zip(xs, layers))
    out = jax.vmap(fn)(flat)
    return jax.tree.map(lambda t: t.reshape(batch), out)


@partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _euler_scan(net, xs0, dt, num_steps, with_energy, with_states):
    def step(xs, _):
        new = tuple(x + dt * v for x, v in zip(xs, net.dynamics(xs)))
        rec = (net.energy(new) if with_energy else None, new if with_states else None)
        return new, rec

    final, (energies, states) = jax.lax.scan(step, xs0, None, length=num_steps)
    if with_energy:
        energies = jnp.concatenate([net.energy(xs0)[None], energies])
    if with_states:
        states = tuple(jnp.concatenate([x0[None], s]) for x0, s in zip(xs0, states))
    return final, (energies, states)
