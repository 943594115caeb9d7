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

from collections.abc import Mapping
from functools import partial

import jax
import jax.numpy as jnp
from flax import struct
from jax.tree_util import GetAttrKey

from imixer_jax.hopfield import lagrangians as lagrangians_lib
from imixer_jax.hopfield import pytree
from imixer_jax.hopfield.lagrangians import Lagrangian
from imixer_jax.hopfield.synapses import EnergySynapse, broadcasts_to, per_sample

Array = jax.Array
States = dict[str, Array]
Connections = Mapping[str, tuple[str, tuple[str, ...]]]


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
        object.__setattr__(self, "shape", tuple(self.shape))
        object.__setattr__(
            self, "lagrangian", lagrangians_lib.bind(self.lagrangian, len(self.shape))
        )

    def activation(self, x: Array) -> Array:
        """g(x) ``[*batch, *shape]``, in ``dtype`` when set."""
        g = self.lagrangian.activation(x)
        return g if self.dtype is None else g.astype(self.dtype)


def _has_shape(leaf) -> bool:
    return hasattr(leaf, "shape") and hasattr(leaf, "dtype")


_LEAF = jax.tree.structure(0)


def _is_pytree_node(obj) -> bool:
    return jax.tree.structure(obj) != _LEAF


def _not_a_pytree(what: str, obj) -> ValueError:
    return ValueError(
        f"{what} of class {type(obj).__name__} is not a registered pytree, so jax.jit would "
        f"treat it as one opaque leaf; decorate the class with @hopfield.dataclass"
    )


@jax.tree_util.register_pytree_with_keys_class
class Network:
    """Named layers coupled by named synapses. A pytree: arrays of layers and synapses are leaves.

    Each synapse couples the layers it names (``synapse.layers``), unless ``connections`` says
    otherwise: ``{name: (synapse_name, layer_names)}`` applies one synapse to several tuples of
    layers (its arrays shared, their gradients summed), e.g. one kernel between every pair of
    neighbouring layers. The energy and currents are sums over connections.

    Construction checks the graph (every connection names existing layers and synapses, every
    synapse and Lagrangian is a pytree) and the shapes (each synapse's ``check``, each bias
    against its layer) and raises a one-line ValueError; ``check_states`` checks states.

    Args:
      layers: ``{name: Layer}``; the order is kept (it fixes the order of sums).
      synapses: ``{name: synapse}`` (``Dense``, ``Conv`` or any ``EnergySynapse``).
      connections: optional ``{name: (synapse_name, layer_names)}``; None: every synapse on its
        own ``layers``, named as the synapse.
    """

    def __init__(
        self,
        layers: Mapping[str, Layer],
        synapses: Mapping[str, EnergySynapse],
        connections: Connections | None = None,
    ):
        self.layers = dict(layers)
        self.synapses = dict(synapses)
        self.connections = _connections(self.synapses, connections)
        self._check()

    # Pytree protocol: unflattening (inside jax transformations) skips the checks.
    def tree_flatten_with_keys(self):
        children = (
            (GetAttrKey("layers"), self.layers),
            (GetAttrKey("synapses"), self.synapses),
        )
        aux = (
            tuple(self.layers),
            tuple(self.synapses),
            tuple(self.connections.items()),
        )
        return children, aux

    @classmethod
    def tree_unflatten(cls, aux, children):
        out = object.__new__(cls)
        layers, synapses = children
        out.layers = {k: layers[k] for k in aux[0]}
        out.synapses = {k: synapses[k] for k in aux[1]}
        out.connections = dict(aux[2])
        return out

    @classmethod
    def unchecked(cls, layers, synapses, connections: Connections | None = None) -> Network:
        """A network built without the checks, e.g. a copy whose arrays carry extra leading
        axes (a per-step schedule)."""
        aux = (tuple(layers), tuple(synapses), tuple(_connections(synapses, connections).items()))
        return cls.tree_unflatten(aux, (dict(layers), dict(synapses)))

    def replace(self, **updates) -> Network:
        """A copy with ``layers``, ``synapses`` and/or ``connections`` replaced (checked again;
        replacing the synapses alone keeps the connections whose synapses remain)."""
        synapses = updates.get("synapses", self.synapses)
        connections = updates.get("connections")
        if connections is None and self.connections != _connections(self.synapses, None):
            connections = {k: c for k, c in self.connections.items() if c[0] in synapses}
        return Network(updates.get("layers", self.layers), synapses, connections)

    def _check(self) -> None:
        if not self.layers:
            raise ValueError("a network needs at least one layer")
        for name, layer in self.layers.items():
            if not _is_pytree_node(layer.lagrangian):
                raise _not_a_pytree(f"layer {name!r}: the Lagrangian", layer.lagrangian)
        for name, syn in self.synapses.items():
            if not _is_pytree_node(syn):
                raise _not_a_pytree(f"synapse {name!r}", syn)
        for name, (synapse, names) in self.connections.items():
            if synapse not in self.synapses:
                raise ValueError(
                    f"connection {name!r} uses unknown synapse {synapse!r}; synapses are "
                    f"{list(self.synapses)}"
                )
            missing = [n for n in names if n not in self.layers]
            if missing:
                raise ValueError(
                    f"synapse {name!r} couples unknown layer(s) {missing}; layers are "
                    f"{list(self.layers)}"
                )
            syn = self.synapses[synapse]
            if len(names) != len(syn.layers):
                raise ValueError(
                    f"connection {name!r} gives {len(names)} layers to synapse {synapse!r}, "
                    f"which couples {len(syn.layers)}"
                )
            if all(_has_shape(leaf) for leaf in jax.tree.leaves(syn)):
                syn.check(tuple(self.layers[n].shape for n in names))
        for name, layer in self.layers.items():
            bias = layer.bias
            if _has_shape(bias) and not broadcasts_to(bias.shape, layer.shape):
                raise ValueError(
                    f"layer {name!r}: bias of shape {bias.shape} does not broadcast to the "
                    f"layer's shape {layer.shape}"
                )

    def check_states(self, xs: States) -> tuple[int, ...]:
        """The states' common batch shape; one-line ValueError for an unknown layer, a state
        whose trailing axes are not its layer's shape, or batch shapes that differ."""
        batch = None
        for name, x in xs.items():
            if name not in self.layers:
                raise ValueError(
                    f"state for unknown layer {name!r}; layers are {list(self.layers)}"
                )
            shape, layer_shape = tuple(jnp.shape(x)), self.layers[name].shape
            lead = len(shape) - len(layer_shape)
            if lead < 0 or shape[lead:] != layer_shape:
                raise ValueError(
                    f"state {name!r} has shape {shape}, but layer {name!r} is {layer_shape}: "
                    f"states are [*batch, *{layer_shape}]"
                )
            if batch is not None and shape[:lead] != batch:
                raise ValueError(
                    f"state {name!r} has batch shape {shape[:lead]}, the other states {batch}"
                )
            batch = shape[:lead]
        return () if batch is None else batch

    @property
    def tied(self) -> bool:
        """True when every synapse is symmetric, i.e. the energy exists."""
        return all(self.synapses[s].tied for s, _ in self.connections.values())

    def batch_shape(self, xs: States) -> tuple[int, ...]:
        """The leading batch axes of the states (checked: see ``check_states``)."""
        return self.check_states(xs)

    # ----------------------------------------------------------------------------------------
    # Activations, currents, dynamics.

    def activations(self, xs: States) -> States:
        """``{name: g}`` for the layers in ``xs``."""
        return {n: self.layers[n].activation(x) for n, x in xs.items()}

    def reads(self, connection: str, target: str) -> set[str]:
        """Layers whose activations the current of ``connection`` into ``target`` reads."""
        synapse, names = self.connections[connection]
        syn = self.synapses[synapse]
        return {names[r] for i, n in enumerate(names) if n == target for r in syn.reads(i)}

    def current(self, name: str, gs: Mapping[str, Array], connections=None) -> Array | None:
        """Sum of the currents into layer ``name`` from ``connections`` (names; default: all),
        in order.

        ``gs`` holds the activations the currents read (batched; only those read are looked
        up); None when no connection touches the layer. The layer's own bias is not included.
        """
        total = None
        for key in self.connections if connections is None else connections:
            synapse, names = self.connections[key]
            syn = self.synapses[synapse]
            shapes = tuple(self.layers[n].shape for n in names)
            for index, target in enumerate(names):
                if target == name:
                    read = syn.reads(index)
                    args = tuple(gs[n] if k in read else None for k, n in enumerate(names))
                    total = add(total, syn.current(index, args, shapes))
        return total

    def currents(self, xs: States) -> States:
        """Total drive I_A into every layer (synapses in order, then bias), shaped like x_A."""
        self.check_states(xs)
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

    def _sample_energy_terms(self, *states: Array) -> dict[str, dict[str, Array]]:
        """Energy terms of one sample (states without batch axes, in layer order)."""
        xs = dict(zip(self.layers, states))
        gs = self.activations(xs)
        neurons = {n: self.layers[n].lagrangian.neuron_energy(x) for n, x in xs.items()}
        synapses = {
            k: self.synapses[s].energy(*(gs[n] for n in names))
            for k, (s, names) in self.connections.items()
        }
        biases = {
            n: -jnp.sum(jnp.broadcast_to(layer.bias, gs[n].shape) * gs[n])
            for n, layer in self.layers.items()
            if layer.bias is not None
        }
        return {"neurons": neurons, "synapses": synapses, "biases": biases}

    def energy_terms(self, xs: States) -> dict[str, dict[str, Array]]:
        """Named tree of energy terms, each of shape ``batch`` (the states' leading axes).

        ``{'neurons': {layer: <x, g> - L}, 'synapses': {connection: E_s},
        'biases': {layer: -<b, g>}}``. Defined only for tied synapses; ``xs`` holds every layer.
        """
        if not self.tied:
            untied = sorted({s for s, _ in self.connections.values() if not self.synapses[s].tied})
            raise ValueError(
                f"the energy exists only for tied (symmetric) synapses, and {untied} are not; "
                "integrate the dynamics instead, or leave them out"
            )
        self.check_states(xs)
        missing = [n for n in self.layers if n not in xs]
        if missing:
            raise ValueError(f"the energy needs the state of every layer; missing {missing}")
        states = tuple(xs[n] for n in self.layers)
        shapes = tuple(self.layers[n].shape for n in self.layers)
        return per_sample(self._sample_energy_terms, states, shapes)

    def energy(self, xs: States) -> Array:
        """Total energy, shape ``batch``."""
        return sum(jax.tree.leaves(self.energy_terms(xs)))

    def reduced_energy(self, visible: States, fast: States) -> Array:
        """E~ = E(visible, fast), shape ``batch`` (``fast`` from ``reduction.solve_fast``)."""
        return self.energy({**visible, **fast})

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
        self.check_states(xs0)
        final, (energies, states) = _euler_scan(self, xs0, dt, num_steps, True, return_states)
        return energies, states, final

    def integrate(self, xs0: States, *, dt: float, num_steps: int) -> States:
        """Explicit Euler integration without energies (valid for untied networks too)."""
        self.check_states(xs0)
        final, _ = _euler_scan(self, xs0, dt, num_steps, False, False)
        return final


def _connections(synapses: Mapping[str, EnergySynapse], connections: Connections | None) -> dict:
    if connections is None:
        return {k: (k, tuple(s.layers)) for k, s in synapses.items()}
    return {k: (s, tuple(names)) for k, (s, names) in connections.items()}


def add(*terms: Array | None) -> Array | None:
    """Left-to-right sum of the terms that are not None (None if all are)."""
    present = [t for t in terms if t is not None]
    if not present:
        return None
    out = present[0]
    for t in present[1:]:
        out = out + t
    return out


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
