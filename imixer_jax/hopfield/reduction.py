"""Adiabatic reduction of a Hopfield graph onto any set of visible (slow) layers.

With the other ("fast") layers' time constants -> 0 they sit at their fixed point x_f = I_f(g)
for the current visible activations, and the visible layers follow the reduced dynamics
tau_v dx_v/dt = I_v(x_v, x_fast*) - x_v, which still descend the energy (dE/dx_f = 0 at the fixed
point). ``docs/theory.md`` has the derivation.

The fixed point is found by Gauss-Seidel sweeps over the fast layers, farthest from the visible
set first (graph distance); currents from visible layers into fast ones are constants of the
sweep, computed once. Only the fast layers a sweep reads before it writes them are iterated
("carried"); the others are recomputed from them. For the chain visible -> internal -> hidden this
is exactly the official iMLP iteration z <- u + F(z) with z the internal layer and u its drive from
the visible layer; a fast layer that reads only visible layers (a two-layer network, or a visible
layer with several hidden neighbours as in the parallelised Mixer) is closed form (no solver).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from functools import partial

import jax
import jax.numpy as jnp

from imixer_jax.hopfield import solver as solver_lib
from imixer_jax.hopfield.graph import Network, add
from imixer_jax.hopfield.solver import Adjoint, Method, Picard, Unrolled

Array = jax.Array
States = dict[str, Array]


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Static schedule of the reduction (layer and connection names only)."""

    visible: tuple[str, ...]
    fast: tuple[str, ...]  # network order
    init_order: tuple[str, ...]  # nearest to the visible set first
    sweep_order: tuple[str, ...]  # farthest first
    carried: tuple[str, ...]  # read before written in a sweep: the solver's state
    constant: dict[str, tuple[str, ...]]  # connections into a fast layer reading visible ones only
    dynamic: dict[str, tuple[str, ...]]  # the other connections into a fast layer


def schedule(net: Network, visible: Collection[str]) -> Schedule:
    """The sweep schedule for ``visible``; one-line ValueError for unknown or no visible layers."""
    unknown = sorted(set(visible) - set(net.layers))
    visible = tuple(n for n in net.layers if n in set(visible))
    if unknown or not visible:
        raise ValueError(
            f"visible layers must be a non-empty subset of {list(net.layers)}; got "
            f"{sorted(unknown) or 'none'}"
        )
    fast = tuple(n for n in net.layers if n not in visible)
    neighbours = {n: set() for n in net.layers}
    for _, names in net.connections.values():
        for a in names:
            neighbours[a] |= set(names) - {a}
    distance = dict.fromkeys(visible, 0)
    frontier = list(visible)
    while frontier:
        nxt = []
        for a in frontier:
            for b in sorted(neighbours[a] - set(distance), key=fast.index):
                distance[b] = distance[a] + 1
                nxt.append(b)
        frontier = nxt
    far = len(net.layers)  # layers not connected to the visible set come last in the init
    init_order = tuple(sorted(fast, key=lambda n: distance.get(n, far)))
    sweep_order = tuple(reversed(init_order))
    constant, dynamic = {}, {}
    for f in fast:
        touching = [k for k, (_, names) in net.connections.items() if f in names]
        constant[f] = tuple(k for k in touching if net.reads(k, f) <= set(visible))
        dynamic[f] = tuple(k for k in touching if k not in constant[f])
    written, carried = set(), []
    for f in sweep_order:
        for k in dynamic[f]:
            for r in net.reads(k, f):
                if r in fast and r not in written and r not in carried:
                    carried.append(r)
        written.add(f)
    carried = tuple(n for n in fast if n in carried)
    return Schedule(visible, fast, init_order, sweep_order, carried, constant, dynamic)


class _Activations(Mapping):
    """Activations computed on first use (and cached) from a dict of states."""

    def __init__(self, net: Network, states: Mapping[str, Array], known: Mapping | None = None):
        self._net, self._states, self._cache = net, states, dict(known or {})

    def __getitem__(self, name: str) -> Array:
        if name not in self._cache:
            self._cache[name] = self._net.layers[name].activation(self._states[name])
        return self._cache[name]

    def __iter__(self):
        return iter(self._states)

    def __len__(self) -> int:
        return len(self._states)


def _zeros(net: Network, name: str, dtype, batch: tuple[int, ...]) -> Array:
    return jnp.zeros(batch + net.layers[name].shape, dtype)


def _current(net: Network, name: str, gs: _Activations, connections, recompute: bool):
    """``net.current(name, gs, connections)``; with ``recompute`` the backward pass saves the
    states whose activations the currents read (not the activations, nor what differentiating the
    activations needs) and computes those activations again (``_recomputed_current``)."""
    read = {n for k in connections for n in net.reads(k, name)}
    if not recompute or not read:
        return net.current(name, gs, connections)
    states = {n: gs._states[n] for n in read if n in gs._states}
    known = {n: gs[n] for n in read if n not in states}
    return _recomputed_current(name, tuple(connections), net, states, known)


def _current_of(name, connections, net, states, known):
    return net.current(name, _Activations(net, states, known), connections)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _recomputed_current(name, connections, net, states, known):
    """The current into ``name`` from ``connections`` at the activations of ``states`` (and the
    activations ``known``), differentiated by recomputing those activations.

    Written as a custom VJP because ``jax.checkpoint`` keeps its recomputation in the backward
    pass only through optimization barriers, which XLA:CPU removes before scheduling; common-
    subexpression elimination then merges the recomputed activations with the forward ones, which
    stay alive until the backward pass. Here the recomputation reads ``state + 0 * ct``, a data
    dependency on the cotangent, so it cannot be merged or hoisted (a non-finite cotangent makes
    the gradients NaN, as it would anyway). The contraction's own output is not needed by its VJP,
    so only the activations are computed again.
    """
    return _current_of(name, connections, net, states, known)


def _recomputed_fwd(name, connections, net, states, known):
    return _current_of(name, connections, net, states, known), (net, states, known)


def _recomputed_bwd(name, connections, saved, ct):
    net, states, known = saved
    tie = jnp.zeros((), ct.dtype) * ct.ravel()[0]
    states = {n: x + tie.astype(x.dtype) for n, x in states.items()}
    _, vjp = jax.vjp(partial(_current_of, name, connections), net, states, known)
    return vjp(ct)


_recomputed_current.defvjp(_recomputed_fwd, _recomputed_bwd)


def _prepare(net: Network, visible: States, recompute: bool = False):
    """Schedule, batch shape, dtype, visible activations and the constant drives of the fast layers
    (currents from the visible layers, computed once)."""
    p = schedule(net, visible)
    batch = net.check_states(visible)
    dtype = next(iter(visible.values())).dtype
    gs = _Activations(net, visible)
    constant = {f: _current(net, f, gs, p.constant[f], recompute) for f in p.fast}
    return p, batch, dtype, dict(gs) if recompute else gs._cache, constant


def _init(net, p, visible, visible_gs, constant, batch, dtype, recompute=False) -> States:
    """Fast states, nearest first, each set to its drive from the layers already set."""
    states = dict(visible)
    gs = _Activations(net, states, visible_gs)
    for f in p.init_order:
        ready = tuple(k for k in p.dynamic[f] if net.reads(k, f) <= set(states))
        total = add(constant[f], _current(net, f, gs, ready, recompute), net.layers[f].bias)
        states[f] = _zeros(net, f, dtype, batch) if total is None else total
    return {f: states[f] for f in p.fast}


def init_states(net: Network, visible: States) -> States:
    """All states from the visible ones: each other layer, nearest first, set to its drive from
    the layers already set (a feedforward pass; zeros where nothing drives it yet)."""
    p, batch, dtype, visible_gs, constant = _prepare(net, visible)
    fast = _init(net, p, visible, visible_gs, constant, batch, dtype)
    return {n: visible[n] if n in visible else fast[n] for n in net.layers}


def _update(net, p, f, gs, constant, batch, dtype, recompute) -> Array:
    total = add(constant[f], _current(net, f, gs, p.dynamic[f], recompute), net.layers[f].bias)
    return _zeros(net, f, dtype, batch) if total is None else total


def _sweep(
    carried: States, params, step_net=None, *, p: Schedule, batch, dtype, recompute=False
) -> States:
    """One Gauss-Seidel sweep: new states of the carried layers. ``params`` is
    ``(net, constant drives, visible activations)``; ``step_net`` replaces ``net`` if given."""
    net, constant, visible_gs = params
    use = net if step_net is None else step_net
    states = dict(carried)
    gs = _Activations(use, states, visible_gs)
    for f in p.sweep_order:
        states[f] = _update(use, p, f, gs, constant, batch, dtype, recompute)
        gs._cache.pop(f, None)  # later reads see the new state (Gauss-Seidel)
    return {f: states[f] for f in p.carried}


def _complete(net, p, carried, constant, visible_gs, batch, dtype, recompute=False) -> States:
    """Every fast state from the carried ones (the others recomputed, carried kept)."""
    states = dict(carried)
    gs = _Activations(net, states, visible_gs)
    for f in p.sweep_order:
        if f not in carried:
            states[f] = _update(net, p, f, gs, constant, batch, dtype, recompute)
    return {f: states[f] for f in p.fast}


def solve_fast(
    net: Network,
    visible: States,
    *,
    max_steps: int | None = None,
    tol: float = 0.0,
    method: Method = Picard(),
    adjoint: Adjoint = Unrolled(),
    per_sample: bool = True,
    throw: bool = False,
    recompute: bool = False,
) -> tuple[States, solver_lib.Solution | None]:
    """Fast layers at their fixed point for the visible states.

    Iterates Gauss-Seidel sweeps from the feedforward initial state (``init_states``), so that
    ``max_steps = n_iter`` with ``tol = 0`` reproduces the official iMLP FPA.

    Args:
      net: the network.
      visible: ``{name: x}`` for the visible layers, each ``[*batch, *shape]``.
      max_steps: the step budget, required when the fast layers form a loop (0 keeps the
        feedforward state); unused when they are closed form.
      tol, method, throw: as in ``solver.fixed_point``.
      adjoint: as in ``solver.fixed_point``; ``Unrolled(per_step=copy)`` takes a copy of ``net``
        whose arrays carry a leading ``[max_steps]`` axis (sweep k uses slice k), e.g. the
        official per-call spectral norm.
      per_sample: every sample (index of the batch axes) stops on its own residual; False: the
        whole batch stops together on one residual.
      recompute: the backward pass saves the states each current reads and computes their
        activations again, instead of saving the activations and what differentiating them needs
        (less memory for elementwise work; reverse mode only, no ``jax.jvp``).

    Returns:
      ``({name: x*}`` for every fast layer, ``Solution`` or None when the fast layers are closed
      form (no fast layer reads another before it is set)).
    """
    p, batch, dtype, visible_gs, constant = _prepare(net, visible, recompute)
    if not p.carried:
        return _complete(net, p, {}, constant, visible_gs, batch, dtype, recompute), None
    if max_steps is None:
        raise ValueError(
            f"the fast layers {list(p.carried)} form a loop, so their fixed point is iterated: "
            "pass max_steps (0 keeps the feedforward state)"
        )
    x0 = _init(net, p, visible, visible_gs, constant, batch, dtype, recompute)
    solution = solver_lib.fixed_point(
        partial(_sweep, p=p, batch=batch, dtype=dtype, recompute=recompute),
        {f: x0[f] for f in p.carried},
        (net, constant, visible_gs),
        max_steps=max_steps,
        tol=tol,
        method=method,
        adjoint=adjoint,
        batch_ndim=len(batch),
        per_sample=per_sample,
        throw=throw,
    )
    complete = _complete(net, p, solution.value, constant, visible_gs, batch, dtype, recompute)
    return complete, solution


def reduced_currents(
    net: Network, visible: States, fast: States, *, recompute: bool = False
) -> States:
    """Drive into every visible layer at the fast states (synapses in order, then bias);
    ``recompute`` as in ``solve_fast``."""
    net.check_states({**visible, **fast})
    gs = _Activations(net, {**visible, **fast})
    out = {}
    for v, x in visible.items():
        total = add(_current(net, v, gs, tuple(net.connections), recompute), net.layers[v].bias)
        out[v] = jnp.zeros_like(x) if total is None else total
    return out


def reduced_descend(
    net: Network, visible: States, *, dt: float, num_steps: int, **solve
) -> tuple[Array | None, dict[str, Array], States]:
    """Explicit Euler steps x_v += dt / tau_v (I_v - x_v) of the reduced visible dynamics, the
    fast layers solved (``solve_fast(**solve)``) at every visited state, under ``lax.scan``.

    Returns ``(energies, stats, final)``: the reduced energy ``[num_steps + 1, *batch]`` at every
    visited state (None if the network is untied); solver statistics at every visited state,
    ``{'steps', 'residual', 'status'}`` each ``[num_steps + 1, *batch]`` (``[num_steps + 1]``
    with ``per_sample=False``; empty when the fast layers are closed form); and the final
    visible states. ``solve`` must be hashable (no ``Unrolled(per_step=...)``).
    """
    return _reduced_descend(net, visible, dt, num_steps, tuple(sorted(solve.items())))


def _record(net, x, fast, solution):
    energy = net.reduced_energy(x, fast) if net.tied else None
    if solution is None:
        return energy, {}
    return energy, {
        "steps": solution.steps,
        "residual": solution.residual,
        "status": solution.status,
    }


@partial(jax.jit, static_argnums=(2, 3, 4))
def _reduced_descend(net, visible, dt, num_steps, solve):
    solve = dict(solve)

    def step(x, _):
        fast, solution = solve_fast(net, x, **solve)
        current = reduced_currents(net, x, fast)
        new = {v: x[v] + dt / net.layers[v].tau * (current[v] - x[v]) for v in x}
        return new, _record(net, x, fast, solution)

    final, records = jax.lax.scan(step, visible, None, length=num_steps)
    last = _record(net, final, *solve_fast(net, final, **solve))
    energies, stats = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), records, last)
    return energies, stats, final
