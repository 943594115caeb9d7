"""Lagrangians, energy, dynamics, energy descent and the adiabatic limit of the HHN core."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imixer_jax.hopfield import Dense, HierarchicalNetwork, Implicit, Layer, lagrangians
from tests import random_draws

F32_EPS = float(jnp.finfo(jnp.float32).eps)

CONVEX = ("identity", "relu", "softplus", "softmax", "layernorm")


def test_gelu_is_not_convex_and_the_flag_says_so():
    x = jnp.linspace(-3.0, 3.0, 601)
    slope = jax.vmap(jax.grad(lambda t: lagrangians.GELU().activation(t)))(x)
    assert not lagrangians.GELU.convex
    # GELU' has its minimum -0.1289 at -sqrt(2) and its maximum 1.1289 at sqrt(2) (docs/theory.md).
    np.testing.assert_allclose(slope.min(), -0.1289, atol=2e-4)
    np.testing.assert_allclose(slope.max(), 1.1289, atol=2e-4)
    assert all(lagrangians.get(n).convex for n in CONVEX)


# ---------------------------------------------------------------------------------------------
# Random networks.


def _convex_lagrangian(name: str, key) -> lagrangians.Lagrangian:
    if name == "softmax":
        return lagrangians.Softmax(beta=1.0 + random_draws.uniform(key))
    if name == "layernorm":
        return lagrangians.LayerNorm(gamma=0.5 + random_draws.uniform(key), delta=0.1)
    return lagrangians.get(name)


def random_network(key, names, sizes, *, tied=True, biases=True) -> HierarchicalNetwork:
    keys = iter(random_draws.split(key, 8 * len(sizes)))
    layers = tuple(
        Layer(
            _convex_lagrangian(n, next(keys)) if n in CONVEX else lagrangians.get(n),
            (s,),
            tau=0.5 + 0.4 * a,  # static (a pytree aux field), so not drawn at random
            bias=0.3 * random_draws.normal(next(keys), (s,)) if biases else None,
        )
        for a, (n, s) in enumerate(zip(names, sizes))
    )
    synapses = []
    for a, b in itertools.pairwise(sizes):
        w = random_draws.normal(next(keys), (a, b)) / np.sqrt(a)
        fb = None if tied else random_draws.normal(next(keys), (b, a)) / np.sqrt(b)
        synapses.append(
            Dense(
                w,
                fb,
                forward_bias=0.1 * random_draws.normal(next(keys), (b,)) if biases else None,
                feedback_bias=0.1 * random_draws.normal(next(keys), (a,)) if biases else None,
            )
        )
    return HierarchicalNetwork(layers, tuple(synapses))


def random_states(key, sizes, batch):
    keys = random_draws.split(key, len(sizes))
    return tuple(2.0 * random_draws.normal(k, (*batch, s)) for k, s in zip(keys, sizes))


DEPTH_CASES = [
    (("relu", "softplus", "identity"), (6, 5, 4)),
    (("layernorm", "relu", "softmax"), (7, 6, 5)),
    (("softmax", "softplus", "layernorm", "relu"), (5, 6, 4, 3)),
    (("identity", "layernorm", "softplus", "softmax"), (4, 8, 6, 5)),
]


@pytest.mark.slow
@pytest.mark.parametrize("names,sizes", DEPTH_CASES)
def test_energy_never_increases_along_descent(names, sizes):
    num_nets, batch, steps, dt = 16, 8, 300, 0.02

    def run(key):
        k_net, k_x = random_draws.split(key)
        net = random_network(k_net, names, sizes)
        energies, _, _ = net.descend(random_states(k_x, sizes, (batch,)), dt=dt, num_steps=steps)
        terms = net.energy_terms(random_states(k_x, sizes, (batch,)))
        scale = sum(jnp.abs(t) for t in jax.tree.leaves(terms))
        return energies, scale

    energies, scale = jax.vmap(run)(random_draws.split(jax.random.PRNGKey(len(sizes)), num_nets))
    increase = jnp.diff(energies, axis=1)  # [nets, steps, batch]
    # Rounding of an energy that sums terms of total magnitude `scale`: a few hundred float32 ulps.
    tolerance = 256 * F32_EPS * (1.0 + scale[:, None, :])
    assert bool(jnp.all(increase <= tolerance)), float(jnp.max(increase - tolerance))
    # ... and descent actually happened (the test would pass trivially on a frozen state).
    assert bool(jnp.all(energies[:, -1] < energies[:, 0] - 1e-3))


@pytest.mark.slow
def test_energy_gradient_equals_minus_tau_hessian_times_velocity():
    names, sizes = ("layernorm", "softplus", "softmax", "relu"), (5, 6, 4, 3)
    net = random_network(jax.random.PRNGKey(3), names, sizes)
    xs = random_states(jax.random.PRNGKey(4), sizes, ())
    grads = jax.grad(lambda s: net.energy(s))(xs)
    velocity = net.dynamics(xs)
    for layer, x, v, g in zip(net.layers, xs, velocity, grads):
        _, hess_v = jax.jvp(layer.lagrangian.activation, (x,), (v,))
        chex.assert_trees_all_close(g, -layer.tau * hess_v, atol=1e-5, rtol=1e-4)


@pytest.mark.slow  # covered in the default set by the graph core's stationarity test
def test_fixed_point_of_dynamics_has_zero_energy_gradient():
    names, sizes = ("relu", "softplus", "layernorm"), (6, 5, 4)
    net = random_network(jax.random.PRNGKey(5), names, sizes)
    xs0 = random_states(jax.random.PRNGKey(6), sizes, (4,))
    final = net.integrate(xs0, dt=0.05, num_steps=4000)
    speed = max(float(jnp.max(jnp.abs(v))) for v in net.dynamics(final))
    assert speed < 1e-5, speed  # reached a fixed point (the dynamics are a contraction here)
    grads = jax.grad(lambda s: jnp.sum(net.energy(s)))(final)
    grads0 = jax.grad(lambda s: jnp.sum(net.energy(s)))(xs0)
    # |dE/dx| <= tau |M| |dx/dt| with |M| <= max gain (~1.5 here): 1e-4 bounds it with margin.
    for g, g0 in zip(grads, grads0):
        assert float(jnp.max(jnp.abs(g))) < 1e-4
        assert float(jnp.max(jnp.abs(g0))) > 1e-2  # the check can fail away from the fixed point


def test_energy_terms_tree_and_untied_error():
    names, sizes = ("layernorm", "relu", "softplus"), (5, 4, 3)
    net = random_network(jax.random.PRNGKey(7), names, sizes)
    xs = random_states(jax.random.PRNGKey(8), sizes, (2, 3))

    @jax.jit  # one program: eagerly each op compiles on its own for every new shape
    def energies(net, xs):
        return net.energy_terms(xs), net.energy(xs), net.energy(tuple(x[1, 2] for x in xs))

    terms, energy, single = energies(net, xs)
    assert set(terms) == {"neurons", "synapses", "biases"}
    assert set(terms["neurons"]) == {"layer_0", "layer_1", "layer_2"}
    assert set(terms["synapses"]) == {"synapse_0", "synapse_1"}
    chex.assert_shape(energy, (2, 3))
    # The batched energy equals the energy of each sample computed alone.
    np.testing.assert_allclose(energy[1, 2], single, rtol=1e-6)
    untied = random_network(jax.random.PRNGKey(7), names, sizes, tied=False)
    with pytest.raises(ValueError, match="tied"):
        untied.energy(xs)
    untied.integrate(xs, dt=0.1, num_steps=3)  # dynamics stay defined


def test_descent_returns_states_on_request():
    names, sizes = ("relu", "softplus", "identity"), (3, 4, 2)
    net = random_network(jax.random.PRNGKey(9), names, sizes)
    xs = random_states(jax.random.PRNGKey(10), sizes, (5,))
    energies, states, final = net.descend(xs, dt=0.1, num_steps=7, return_states=True)
    chex.assert_shape(energies, (8, 5))
    chex.assert_shape(states[1], (8, 5, 4))
    chex.assert_trees_all_close(tuple(s[-1] for s in states), final)
    chex.assert_trees_all_close(tuple(s[0] for s in states), xs)
    np.testing.assert_allclose(energies[-1], net.energy(final), rtol=1e-6)


def test_synapse_contracts_last_axis_shared_over_channels():
    """A (D, S) token-matrix layer: the synapse contracts S and is shared by the D channels."""
    d, s, t = 3, 5, 4
    w = random_draws.normal(jax.random.PRNGKey(0), (s, t))
    g = random_draws.normal(jax.random.PRNGKey(1), (d, s))
    out = Dense(w).forward(g)
    for c in range(d):
        np.testing.assert_allclose(out[c], g[c] @ w, rtol=1e-6)


@pytest.mark.parametrize("names", [("layernorm", "softplus", "relu"), ("relu", "gelu", "gelu")])
def test_reduced_dynamics_equal_full_dynamics_in_the_adiabatic_limit(names):
    """Full ODE with tau_fast / tau_visible = 1e-2 and 1e-3 versus the reduced visible dynamics:
    the gap is small and shrinks linearly with the ratio (first-order adiabatic error)."""
    sizes = (5, 4, 3)
    base = random_network(jax.random.PRNGKey(11), names, sizes)
    x0 = random_states(jax.random.PRNGKey(12), sizes, (2,))[0]
    errors = {}
    for ratio in (1e-2, 1e-3):
        layers = (base.layers[0].replace(tau=1.0),) + tuple(
            layer.replace(tau=ratio) for layer in base.layers[1:]
        )
        net = base.replace(layers=layers)
        dt = ratio / 10  # Euler, stable for the fast layers; same dt for both paths
        num_steps = round(1.0 / dt)  # integrate to t = 1 = tau_visible

        def solve(x, net=net):
            return net.solve_fast_layers(x, max_steps=200, tol=1e-7, adjoint=Implicit())[0]

        full = net.integrate((x0, *solve(x0)), dt=dt, num_steps=num_steps)

        def reduced_step(x, _, net=net, dt=dt, solve=solve):
            return x + dt * (net.reduced_current(x, solve(x)) - x), None

        reduced, _ = jax.lax.scan(reduced_step, x0, None, length=num_steps)
        moved = float(jnp.max(jnp.abs(reduced - x0)))
        assert moved > 1.0, moved  # the visible layer really moves
        errors[ratio] = float(jnp.max(jnp.abs(full[0] - reduced))) / moved
    assert errors[1e-3] < 1e-2, errors
    # First order in the ratio: a 10x smaller ratio gives a ~10x smaller gap (measured 9.5-9.9).
    assert 7.0 < errors[1e-2] / errors[1e-3] < 13.0, errors
