"""A Hopfield network as a graph: named layers, named synapses, energy, dynamics, energy descent.

Layer ``name`` has a state ``x`` of shape ``[*batch, *shape]``, a Lagrangian ``L`` with activation
``g = dL/dx``, a time constant ``tau``, an optional external current ``bias`` (broadcast to
``shape``) and an optional activation ``dtype`` (mixed precision). A synapse couples the layers it
names (see ``synapses``); any graph is allowed, including a layer with several neighbours,
self-couplings and cycles: energy and dynamics are sums over synapses, so they stay well defined.

Drive into layer A: I_A = sum of the currents of every synapse touching A + b_A;
dynamics tau_A dx_A/dt = I_A - x_A. Energy (all synapses tied):

    E = sum_A [<x_A, g_A> - L_A(x_A)] + sum_s E_s(g) - sum_A <b_A, g_A>

and with convex Lagrangians dE/dt = -sum_A tau_A v_A^T Hess(L_A) v_A <= 0 (v_A = dx_A/dt), which
``descend`` shows numerically. The derivation is in ``docs/theory.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from math import prod

import jax
import jax.numpy as jnp
from flax import struct
from jax.tree_util import GetAttrKey

from imixer_jax.hopfield import lagrangians as lagrangians_lib
from imixer_jax.hopfield import pytree, reduction
from imixer_jax.hopfield.conv import Conv
from imixer_jax.hopfield.lagrangians import Lagrangian
from imixer_jax.hopfield.reduction import add
from imixer_jax.hopfield.solver import Solution
from imixer_jax.hopfield.synapses import Dense, Directed, EnergySynapse, broadcasts_to

Array = jax.Array
States = dict[str, Array]


@pytree.dataclass
class Layer:
    """A layer of neurons: Lagrangian, state shape (without batch axes), time constant, bias.

    A Lagrangian with ``axis=None`` (normalise over the whole state) is bound to the layer's axes.
    ``dtype`` (None: the state's) is the dtype the activations are handed to the synapses in: g is
    computed from the state in the state's dtype, then cast, e.g. a LayerNorm computed in float32
    that feeds bfloat16 synapses.
    """

    lagrangian: Lagrangian
    shape: tuple[int, ...] = struct.field(pytree_node=False)
    tau: float = struct.field(pytree_node=False, default=1.0)
    bias: Array | None = None
    dtype: jnp.dtype | None = struct.field(pytree_node=False, default=None)

    def __post_init__(self):
        object.__setattr__(
            self, "lagrangian", lagrangians_lib.bind(self.lagrangian, len(self.shape))
        )

    def activation(self, x: Array) -> Array:
        """g(x) ``[*batch, *shape]``, in ``dtype`` when set."""
        g = self.lagrangian.activation(x)
        return g if self.dtype is None else g.astype(self.dtype)


def _has_shape(leaf) -> bool:
    return hasattr(leaf, "shape") and hasattr(leaf, "dtype")


@jax.tree_util.register_pytree_with_keys_class
class Network:
    """Named layers coupled by named synapses. A pytree: arrays of layers and synapses are leaves.

    Construction checks the graph (every synapse names existing layers) and the shapes (each
    synapse's ``check``, each bias against its layer) and raises a one-line ValueError.

    Args:
      layers: ``{name: Layer}``; the order is kept (it fixes the order of sums).
      synapses: ``{name: synapse}`` (``Dense`` or any ``EnergySynapse``).
    """

    def __init__(self, layers: Mapping[str, Layer], synapses: Mapping[str, EnergySynapse]):
        self.layers = dict(layers)
        self.synapses = dict(synapses)
        self._check()

    # Pytree protocol: unflattening (inside jax transformations) skips the checks.
    def tree_flatten_with_keys(self):
        children = ((GetAttrKey("layers"), self.layers), (GetAttrKey("synapses"), self.synapses))
        return children, (tuple(self.layers), tuple(self.synapses))

    @classmethod
    def tree_unflatten(cls, aux, children):
        out = object.__new__(cls)
        layers, synapses = children
        out.layers = {k: layers[k] for k in aux[0]}
        out.synapses = {k: synapses[k] for k in aux[1]}
        return out

    def replace(self, **updates) -> Network:
        """A copy with ``layers`` and/or ``synapses`` replaced (checked again)."""
        return Network(updates.get("layers", self.layers), updates.get("synapses", self.synapses))

    def _check(self) -> None:
        if not self.layers:
            raise ValueError("a network needs at least one layer")
        for name, syn in self.synapses.items():
            missing = [n for n in syn.layers if n not in self.layers]
            if missing:
                raise ValueError(
                    f"synapse {name!r} couples unknown layer(s) {missing}; layers are "
                    f"{list(self.layers)}"
                )
            if all(_has_shape(leaf) for leaf in jax.tree.leaves(syn)):
                syn.check(tuple(self.layers[n].shape for n in syn.layers))
        for name, layer in self.layers.items():
            bias = layer.bias
            if _has_shape(bias) and not broadcasts_to(bias.shape, layer.shape):
                raise ValueError(
                    f"layer {name!r}: bias of shape {bias.shape} does not broadcast to the "
                    f"layer's shape {layer.shape}"
                )

    @property
    def tied(self) -> bool:
        """True when every synapse is symmetric, i.e. the energy exists."""
        return all(s.tied for s in self.synapses.values())

    def batch_shape(self, xs: States) -> tuple[int, ...]:
        """The leading batch axes of the states (those not in the layer shapes)."""
        name, x = next(iter(xs.items()))
        return x.shape[: x.ndim - len(self.layers[name].shape)]

    # ----------------------------------------------------------------------------------------
    # Activations, currents, dynamics.

    def activations(self, xs: States) -> States:
        """``{name: g}`` for the layers in ``xs``."""
        return {n: self.layers[n].activation(x) for n, x in xs.items()}

    def current(self, name: str, gs: States, synapses: Mapping | None = None) -> Array | None:
        """Sum of the currents into layer ``name`` from ``synapses`` (default: all), in order.

        ``gs`` holds the activations the currents read (batched); None when no synapse touches
        the layer. The layer's own bias is not included.
        """
        total = None
        for syn in (self.synapses if synapses is None else synapses).values():
            for index, target in enumerate(syn.layers):
                if target == name:
                    total = add(total, synapse_current(syn, index, gs, self))
        return total

    def currents(self, xs: States) -> States:
        """Total drive I_A into every layer (synapses in order, then bias), shaped like x_A."""
        gs = self.activations(xs)
        out = {}
        for name, layer in self.layers.items():
            total = add(self.current(name, gs), layer.bias)
            out[name] = jnp.zeros_like(xs[name]) if total is None else total
        return out

    def dynamics(self, xs: States) -> States:
        """dx_A/dt = (I_A - x_A) / tau_A for every layer."""
        currents = self.currents(xs)
        return {n: (currents[n] - xs[n]) / self.layers[n].tau for n in self.layers}

    # ----------------------------------------------------------------------------------------
    # Energy.

    def _sample_energy_terms(self, xs: States) -> dict[str, dict[str, Array]]:
        """Energy terms of one sample (states without batch axes)."""
        gs = self.activations(xs)
        neurons = {n: self.layers[n].lagrangian.neuron_energy(x) for n, x in xs.items()}
        synapses = {n: s.energy(*(gs[name] for name in s.layers)) for n, s in self.synapses.items()}
        biases = {
            n: -jnp.sum(jnp.broadcast_to(layer.bias, gs[n].shape) * gs[n])
            for n, layer in self.layers.items()
            if layer.bias is not None
        }
        return {"neurons": neurons, "synapses": synapses, "biases": biases}

    def energy_terms(self, xs: States) -> dict[str, dict[str, Array]]:
        """Named tree of energy terms, each of shape ``batch`` (the states' leading axes).

        ``{'neurons': {layer: <x, g> - L}, 'synapses': {synapse: E_s},
        'biases': {layer: -<b, g>}}``. Defined only for tied synapses.
        """
        if not self.tied:
            raise ValueError(
                "the energy exists only for tied (symmetric) synapses; build the network with "
                "tied=True to evaluate it"
            )
        return per_sample(self._sample_energy_terms, self, xs)

    def energy(self, xs: States) -> Array:
        """Total energy, shape ``batch``."""
        return sum(jax.tree.leaves(self.energy_terms(xs)))

    # ----------------------------------------------------------------------------------------
    # Energy descent.

    def descend(
        self, xs0: States, *, dt: float, num_steps: int, return_states: bool = False
    ) -> tuple[Array, States | None, States]:
        """Explicit Euler integration of the dynamics under ``lax.scan``.

        Returns ``(energies, states, final)``: energies ``[num_steps + 1, *batch]`` (the energy
        at every visited state, initial included; requires tied synapses), states (each
        ``[num_steps + 1, *batch, *shape]``) when ``return_states`` else None, and the final
        states. Use ``integrate`` for untied networks, which have no energy.
        """
        final, (energies, states) = _euler_scan(self, xs0, dt, num_steps, True, return_states)
        return energies, states, final

    def integrate(self, xs0: States, *, dt: float, num_steps: int) -> States:
        """Explicit Euler integration without energies (valid for untied networks too)."""
        final, _ = _euler_scan(self, xs0, dt, num_steps, False, False)
        return final

    # ----------------------------------------------------------------------------------------
    # Adiabatic reduction onto any set of visible layers (see ``reduction``).

    def init_states(self, visible: States) -> States:
        """All states from the visible ones: every other layer by one feedforward pass."""
        return reduction.init_states(self, visible)

    def solve_fast(self, visible: States, **solver) -> tuple[States, Solution | None]:
        """Fast layers at their fixed point for the given visible states (see
        ``reduction.solve_fast``); returns ``(fast_states, Solution | None)``."""
        return reduction.solve_fast(self, visible, **solver)

    def reduced_currents(self, visible: States, fast: States) -> States:
        """Drive into every visible layer at the fast states (synapses in order, then bias)."""
        return reduction.reduced_currents(self, visible, fast)

    def reduced_energy(self, visible: States, fast: States) -> Array:
        """E~ = E(visible, fast), shape ``batch``."""
        return self.energy({**visible, **fast})

    def reduced_descend(self, visible: States, **kwargs):
        """Euler descent of the reduced visible dynamics (see ``reduction.reduced_descend``)."""
        return reduction.reduced_descend(self, visible, **kwargs)


def synapse_current(syn: EnergySynapse, index: int, gs: States, net: Network) -> Array | None:
    """Current of ``syn`` into its ``index``-th layer from the (batched) activations ``gs`` (None
    into the pre layer of a ``Directed`` synapse)."""
    if isinstance(syn, Directed) and index == 0:
        return None
    if isinstance(syn, Dense):  # closed form, any batch axes
        return syn.backward(gs[syn.post]) if index == 0 else syn.forward(gs[syn.pre])
    if isinstance(syn, Conv):  # closed form; the transposed convolution needs the pre shape
        if index == 0:
            return syn.backward(gs[syn.post], net.layers[syn.pre].shape)
        return syn.forward(gs[syn.pre])
    args = {n: gs[n] for n in syn.layers}
    return per_sample(lambda g: syn.currents(*(g[n] for n in syn.layers))[index], net, args)


def per_sample(fn: Callable, net: Network, xs: States):
    """Applies a per-sample function of the states over their (flattened) leading batch axes."""
    batch = net.batch_shape(xs)
    flat = {n: x.reshape((prod(batch), *net.layers[n].shape)) for n, x in xs.items()}
    out = jax.vmap(fn)(flat)
    return jax.tree.map(lambda t: t.reshape(batch + t.shape[1:]), out)


@partial(jax.jit, static_argnums=(3, 4, 5))  # dt traced: one program for every step size
def _euler_scan(net, xs0, dt, num_steps, with_energy, with_states):
    def step(xs, _):
        velocity = net.dynamics(xs)
        new = {n: x + dt * velocity[n] for n, x in xs.items()}
        rec = (net.energy(new) if with_energy else None, new if with_states else None)
        return new, rec

    final, (energies, states) = jax.lax.scan(step, xs0, None, length=num_steps)
    if with_energy:
        energies = jnp.concatenate([net.energy(xs0)[None], energies])
    if with_states:
        states = {n: jnp.concatenate([xs0[n][None], s]) for n, s in states.items()}
    return final, (energies, states)
