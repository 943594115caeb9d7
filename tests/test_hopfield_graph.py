"""Hopfield graphs: named layers and synapses, synapse axes, user-defined synapses, cycles, and
the adiabatic reduction onto any visible layers (a visible layer with two hidden neighbours: the
parallelised Mixer block)."""

import dataclasses
from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from imixer_jax import hopfield
from imixer_jax.hopfield import (
    Dense,
    EnergySynapse,
    HierarchicalNetwork,
    Implicit,
    Layer,
    Network,
    lagrangians,
    reduction,
)
from tests import random_draws

F32_EPS = float(jnp.finfo(jnp.float32).eps)
S, D, T, C = 6, 4, 5, 7


def _normal(key, shape, scale=1.0):
    return scale * random_draws.normal(key, shape) / np.sqrt(shape[0])


def parallel_mixer_block(key, *, hidden="relu", tied=True) -> Network:
    """The parallelised Mixer block: a visible S x D layer with a LayerNorm Lagrangian over the
    whole matrix, a token hidden layer (T x D) and a channel hidden layer (S x C), both attached
    to the visible layer. Reduced update: x <- x + TokenMLP(LN x) + ChannelMLP(LN x)."""
    k = random_draws.split(key, 4)
    token = Dense(_normal(k[0], (S, T)), pre="x", post="tok", spec="sd,st->td")
    channel = Dense(_normal(k[1], (D, C)), pre="x", post="chn", spec="sd,dc->sc")
    if not tied:  # a symmetry-breaking feedback, as in the asymmetric Mixer
        token = token.replace(feedback=_normal(k[2], (T, S)))
        channel = channel.replace(feedback=_normal(k[3], (C, D)))
    return Network(
        layers={
            "x": Layer(lagrangians.LayerNorm(gamma=1.0, axis=None), (S, D)),
            "tok": Layer(lagrangians.get(hidden), (T, D), bias=0.1 * jnp.ones((T, 1))),
            "chn": Layer(lagrangians.get(hidden), (S, C), bias=-0.1 * jnp.ones((C,))),
        },
        synapses={"token": token, "channel": channel},
    )


def test_token_and_channel_synapses_contract_their_axis():
    net = parallel_mixer_block(jax.random.PRNGKey(0))
    w_tok, w_chn = net.synapses["token"].weight, net.synapses["channel"].weight
    g = random_draws.normal(jax.random.PRNGKey(1), (2, S, D))
    tok, chn = net.synapses["token"].forward(g), net.synapses["channel"].forward(g)
    chex.assert_shape((tok, chn), ((2, T, D), (2, S, C)))
    for b in range(2):
        np.testing.assert_allclose(tok[b], w_tok.T @ g[b], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(chn[b], g[b] @ w_chn, rtol=1e-5, atol=1e-6)
    # Tied feedback is the transposed map: <h, W g> = <W^T h, g>.
    h = random_draws.normal(jax.random.PRNGKey(2), (T, D))
    back = net.synapses["token"].backward(h)
    np.testing.assert_allclose(jnp.vdot(h, tok[0]), jnp.vdot(back, g[0]), rtol=1e-5)


def test_reduced_update_is_token_mlp_plus_channel_mlp():
    net = parallel_mixer_block(jax.random.PRNGKey(3))
    x = 2.0 * random_draws.normal(jax.random.PRNGKey(4), (3, S, D))
    fast, solution = reduction.solve_fast(net, {"x": x})
    assert solution is None  # both hidden layers read only the visible one: closed form
    y = reduction.reduced_currents(net, {"x": x}, fast)["x"]
    g = (x - x.mean((1, 2), keepdims=True)) / jnp.sqrt(x.var((1, 2), keepdims=True) + 1e-6)
    w_tok, w_chn = net.synapses["token"].weight, net.synapses["channel"].weight
    token_mlp = jnp.einsum(
        "st,btd->bsd", w_tok, jax.nn.relu(jnp.einsum("st,bsd->btd", w_tok, g) + 0.1)
    )
    channel_mlp = jax.nn.relu(g @ w_chn - 0.1) @ w_chn.T
    np.testing.assert_allclose(y, token_mlp + channel_mlp, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hidden", ["relu", "softplus", "tanh"])
def test_parallel_mixer_block_descends_its_reduced_energy(hidden):
    net = parallel_mixer_block(jax.random.PRNGKey(5), hidden=hidden)
    x = 2.0 * random_draws.normal(jax.random.PRNGKey(6), (4, S, D))
    energies, stats, final = reduction.reduced_descend(net, {"x": x}, dt=0.05, num_steps=200)
    chex.assert_shape(energies, (201, 4))
    assert stats == {}  # closed form: no solver statistics
    scale = 1.0 + jnp.abs(energies)
    # Rounding of an energy of a few hundred float32 terms: 256 ulps of its magnitude.
    assert bool(jnp.all(jnp.diff(energies, axis=0) <= 256 * F32_EPS * scale[1:]))
    assert bool(jnp.all(energies[-1] < energies[0] - 1e-2))  # it really descended
    chex.assert_shape(final["x"], (4, S, D))


def test_untied_block_has_dynamics_but_no_energy():
    net = parallel_mixer_block(jax.random.PRNGKey(7), tied=False)
    x = random_draws.normal(jax.random.PRNGKey(8), (2, S, D))
    energies, _, final = reduction.reduced_descend(net, {"x": x}, dt=0.1, num_steps=3)
    assert energies is None
    assert bool(jnp.all(jnp.isfinite(final["x"])))
    with pytest.raises(ValueError, match="tied"):
        net.energy(reduction.init_states(net, {"x": x}))


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda w: {"s": Dense(w, pre="x", post="nope", spec="sd,st->td")}, "unknown layer"),
        (lambda w: {"s": Dense(w, pre="x", post="tok", spec="sd,dt->td")}, "axis 'd'"),
        (lambda w: {"s": Dense(w, pre="x", post="tok", spec="sd,st")}, "pre,kernel->post"),
        (lambda w: {"s": Dense(w, pre="x", post="tok", spec="sd,st->qd")}, "post axis"),
        (lambda w: {"s": Dense(w[:, :2], pre="x", post="tok", spec="sd,st->td")}, "elsewhere 2"),
        (
            lambda w: {"s": Dense(w, pre="x", post="tok", spec="sd,st->td", forward_bias=w)},
            "forward_bias",
        ),
    ],
)
def test_construction_errors_are_one_line(build, match):
    layers = {
        "x": Layer(lagrangians.LayerNorm(axis=None), (S, D)),
        "tok": Layer(lagrangians.ReLU(), (T, D)),
    }
    with pytest.raises(ValueError, match=match) as err:
        Network(layers, build(jnp.ones((S, T))))
    assert "\n" not in str(err.value)


def test_layer_bias_and_chain_length_are_checked():
    with pytest.raises(ValueError, match="bias of shape"):
        Network({"x": Layer(lagrangians.ReLU(), (3,), bias=jnp.ones(4))}, {})
    with pytest.raises(ValueError, match="needs 1 synapses, got 2"):
        layers = (Layer(lagrangians.ReLU(), (3,)), Layer(lagrangians.ReLU(), (2,)))
        HierarchicalNetwork(layers, (Dense(jnp.ones((3, 2))), Dense(jnp.ones((3, 2)))))


# ---------------------------------------------------------------------------------------------
# User-defined synapses: only the energy is written.


@struct.dataclass
class Attention(EnergySynapse):
    """Energy-Transformer-like self-coupling of a token layer [N, D]."""

    wq: jax.Array
    wk: jax.Array
    beta: float = struct.field(pytree_node=False, default=1.0)
    layers: tuple[str, ...] = struct.field(pytree_node=False, default=("tokens",))

    def energy(self, g):
        scores = (g @ self.wq) @ (g @ self.wk).T  # [N, N]
        return -jnp.sum(jax.nn.logsumexp(self.beta * scores, axis=-1)) / self.beta


@struct.dataclass
class Bilinear(EnergySynapse):
    """The Dense energy written by hand: its currents come from jax.grad."""

    weight: jax.Array
    layers: tuple[str, ...] = struct.field(pytree_node=False, default=("x", "tok"))

    def energy(self, g_x, g_tok):
        return -jnp.vdot(g_tok, jnp.einsum("sd,st->td", g_x, self.weight))


def test_energy_defined_synapse_matches_the_closed_form_one():
    w = _normal(jax.random.PRNGKey(9), (S, T))
    layers = {
        "x": Layer(lagrangians.LayerNorm(axis=None), (S, D)),
        "tok": Layer(lagrangians.Softplus(), (T, D)),
    }
    dense = Network(layers, {"s": Dense(w, pre="x", post="tok", spec="sd,st->td")})
    generic = Network(layers, {"s": Bilinear(w)})
    xs = {"x": random_draws.normal(jax.random.PRNGKey(10), (3, S, D))}
    xs["tok"] = random_draws.normal(jax.random.PRNGKey(11), (3, T, D))
    # Same sums in another order: float32 rounding of O(1) values.
    chex.assert_trees_all_close(generic.currents(xs), dense.currents(xs), rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(generic.energy(xs), dense.energy(xs), rtol=1e-5, atol=1e-5)


def test_attention_network_descends_its_energy():
    n, d, k = 5, 4, 3
    keys = random_draws.split(jax.random.PRNGKey(12), 4)
    net = Network(
        layers={
            "tokens": Layer(lagrangians.LayerNorm(gamma=1.0), (n, d)),
            "memories": Layer(lagrangians.ReLU(), (6, d)),
        },
        synapses={
            "attention": Attention(_normal(keys[0], (d, k)), _normal(keys[1], (d, k))),
            "hopfield": Dense(
                _normal(keys[2], (n, 6)), pre="tokens", post="memories", spec="nd,nm->md"
            ),
        },
    )
    xs = {
        "tokens": 2.0 * random_draws.normal(keys[3], (3, n, d)),
        "memories": jnp.zeros((3, 6, d)),
    }
    energies, _, _ = net.descend(xs, dt=0.02, num_steps=300)
    scale = 1.0 + jnp.abs(energies)
    assert bool(jnp.all(jnp.diff(energies, axis=0) <= 256 * F32_EPS * scale[1:]))
    assert bool(jnp.all(energies[-1] < energies[0] - 1e-2))


def test_energy_descends_on_a_cycle():
    keys = random_draws.split(jax.random.PRNGKey(13), 4)
    sizes = {"a": 4, "b": 5, "c": 3}
    net = Network(
        layers={
            "a": Layer(lagrangians.Softplus(), (4,), tau=0.5),
            "b": Layer(lagrangians.Tanh(), (5,)),
            "c": Layer(lagrangians.Spherical(), (3,), tau=2.0),
        },
        synapses={
            "ab": Dense(_normal(keys[0], (4, 5)), pre="a", post="b"),
            "bc": Dense(_normal(keys[1], (5, 3)), pre="b", post="c"),
            "ca": Dense(_normal(keys[2], (3, 4)), pre="c", post="a"),
        },
    )
    xs = {n: 2.0 * random_draws.normal(k, (8, s)) for (n, s), k in zip(sizes.items(), keys)}
    energies, _, _ = net.descend(xs, dt=0.02, num_steps=300)
    assert bool(jnp.all(jnp.diff(energies, axis=0) <= 256 * F32_EPS * (1 + jnp.abs(energies[1:]))))
    assert bool(jnp.all(energies[-1] < energies[0] - 1e-3))


# ---------------------------------------------------------------------------------------------
# Reduction onto any visible layers.


def star_network(key) -> Network:
    """Visible 'v' with two hidden neighbours 'a' and 'b', and 'c' above 'a' (so the reduction
    needs the solver): a non-chain graph, tied, convex Lagrangians, biases."""
    k = random_draws.split(key, 6)
    return Network(
        layers={
            "v": Layer(lagrangians.LayerNorm(gamma=1.0, delta=0.1), (5,)),
            "a": Layer(lagrangians.Softplus(), (4,), bias=0.2 * random_draws.normal(k[4], (4,))),
            "b": Layer(lagrangians.ReLU(), (3,)),
            "c": Layer(lagrangians.Tanh(), (6,), bias=0.1 * random_draws.normal(k[5], (6,))),
        },
        synapses={
            "va": Dense(_normal(k[0], (5, 4)), pre="v", post="a", forward_bias=0.1 * jnp.ones(4)),
            "vb": Dense(_normal(k[1], (5, 3)), pre="v", post="b"),
            "ac": Dense(_normal(k[2], (4, 6), 0.8), pre="a", post="c"),
        },
    )


def test_init_states_is_a_feedforward_pass():
    net = star_network(jax.random.PRNGKey(14))
    v = random_draws.normal(jax.random.PRNGKey(15), (2, 5))
    xs = reduction.init_states(net, {"v": v})
    g = net.layers["v"].lagrangian.activation(v)
    a = net.synapses["va"].forward(g) + net.layers["a"].bias
    c = net.synapses["ac"].forward(jax.nn.sigmoid(a)) + net.layers["c"].bias
    chex.assert_trees_all_close(
        xs, {"v": v, "a": a, "b": net.synapses["vb"].forward(g), "c": c}, rtol=1e-6
    )


@pytest.mark.parametrize("visible", [("v",), ("a",), ("v", "c"), ("b", "c")])
def test_fast_fixed_point_is_stationary_for_the_energy(visible):
    """At the fixed point of the fast layers, dE/dx_fast = 0 for any choice of visible layers."""
    net = star_network(jax.random.PRNGKey(16))
    xs = {
        n: 1.5 * random_draws.normal(jax.random.PRNGKey(i), (3, *layer.shape))
        for i, (n, layer) in enumerate(net.layers.items())
    }

    @jax.jit  # one program: eagerly the solver's loop and each gradient op compile on their own
    def energy_gradients(net, xs):
        vis = {n: xs[n] for n in visible}
        fast, solution = reduction.solve_fast(net, vis, max_steps=300, tol=1e-7, adjoint=Implicit())
        energy_grad = jax.grad(lambda f: jnp.sum(net.energy({**vis, **f})))
        return energy_grad(fast), energy_grad({n: xs[n] for n in fast}), solution

    grads, grads0, solution = energy_gradients(net, xs)
    # |dE/dx_f| = |M_f (x_f - I_f)| <= |M_f| * residual * |x| ~ 1e-6; 1e-4 leaves margin.
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads)) < 1e-4
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads0)) > 1e-2
    if solution is not None:
        assert bool(jnp.all(solution.status == 0))


@pytest.mark.parametrize("visible", [("v",), ("a",), ("b", "c")])
def test_recomputed_activations_keep_values_and_gradients(visible):
    """``recompute=True`` changes what the backward pass saves, not what is computed."""
    net = star_network(jax.random.PRNGKey(17))
    vis = {
        n: 1.5 * random_draws.normal(jax.random.PRNGKey(i), (3, *net.layers[n].shape))
        for i, n in enumerate(visible)
    }

    @partial(jax.jit, static_argnums=2)
    def value_and_grads(net, vis, recompute):
        def loss(net, vis):
            fast, _ = reduction.solve_fast(net, vis, max_steps=4, recompute=recompute)
            currents = reduction.reduced_currents(net, vis, fast, recompute=recompute)
            return sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves((fast, currents)))

        return jax.value_and_grad(loss, argnums=(0, 1))(net, vis)

    # Same float32 ops, those of the activations evaluated again in the backward pass (and
    # fused differently there): round-off only, a few ulps of values of order 1.
    chex.assert_trees_all_close(
        value_and_grads(net, vis, True), value_and_grads(net, vis, False), rtol=1e-5, atol=1e-6
    )


def test_unknown_visible_layer_is_a_one_line_error():
    net = star_network(jax.random.PRNGKey(17))
    with pytest.raises(ValueError, match="visible layers must be a non-empty subset"):
        reduction.solve_fast(net, {"w": jnp.ones((1, 5))})


def test_reduced_descend_reports_energies_and_solver_statistics():
    net = star_network(jax.random.PRNGKey(18))
    v = 2.0 * random_draws.normal(jax.random.PRNGKey(19), (4, 5))
    energies, stats, _ = reduction.reduced_descend(
        net, {"v": v}, dt=0.05, num_steps=60, max_steps=100, tol=1e-6, per_sample=True
    )
    chex.assert_shape(energies, (61, 4))
    chex.assert_shape((stats["steps"], stats["residual"], stats["status"]), ((61, 4),) * 3)
    assert bool(jnp.all(stats["status"] == 0)) and bool(jnp.all(stats["residual"] <= 1e-6))
    scale = 1.0 + jnp.abs(energies)
    # Each energy is evaluated at a fixed point solved to 1e-6: its error is second order in the
    # residual (dE/dx_fast = 0), far below the 256-ulp rounding of the energy itself.
    assert bool(jnp.all(jnp.diff(energies, axis=0) <= 256 * F32_EPS * scale[1:]))
    assert bool(jnp.all(energies[-1] < energies[0] - 1e-2))


def test_reduced_dynamics_equal_full_dynamics_in_the_adiabatic_limit_on_a_star():
    """Full ODE with tau_fast / tau_visible = 1e-2 and 1e-3 versus the reduced dynamics of 'v':
    the gap shrinks linearly with the ratio (first-order adiabatic error)."""
    base = star_network(jax.random.PRNGKey(20))
    v0 = 2.0 * random_draws.normal(jax.random.PRNGKey(21), (2, 5))
    errors = {}
    for ratio in (1e-2, 1e-3):
        layers = {n: x.replace(tau=1.0 if n == "v" else ratio) for n, x in base.layers.items()}
        net = base.replace(layers=layers)
        dt = ratio / 10
        num_steps = round(1.0 / dt)

        def solve(v, net=net):
            return reduction.solve_fast(net, {"v": v}, max_steps=200, tol=1e-7, adjoint=Implicit())[
                0
            ]

        full = net.integrate({"v": v0, **solve(v0)}, dt=dt, num_steps=num_steps)

        def reduced_step(v, _, net=net, dt=dt, solve=solve):
            return v + dt * (reduction.reduced_currents(net, {"v": v}, solve(v))["v"] - v), None

        reduced, _ = jax.lax.scan(reduced_step, v0, None, length=num_steps)
        moved = float(jnp.max(jnp.abs(reduced - v0)))
        assert moved > 0.5, moved
        errors[ratio] = float(jnp.max(jnp.abs(full["v"] - reduced))) / moved
    assert errors[1e-3] < 1e-2, errors
    assert 7.0 < errors[1e-2] / errors[1e-3] < 13.0, errors


# ---------------------------------------------------------------------------------------------
# The core's pytree dataclass.


def test_classes_with_equal_static_fields_have_unequal_tree_structures():
    # Issue 9, item 13: under JAX 0.10 the structures of ReLU() and GELU() (registered with
    # jax.tree_util.register_dataclass, as flax.struct.dataclass does) compared equal with unequal
    # hashes, so jit's cache now and then ran the toy ReLU network's energy-rate program on the
    # GELU network (the flaky toy test). Equal structures must mean the same classes.
    from imixer_jax.analysis import toy

    key = jax.random.key(0)
    relu = toy.three_layer_network(key, hidden=("relu", "relu"))
    gelu = toy.three_layer_network(key, hidden=("gelu", "gelu"))
    assert jax.tree.structure(relu) != jax.tree.structure(gelu)
    assert jax.tree.structure(lagrangians.ReLU()) != jax.tree.structure(lagrangians.GELU())
    again = toy.three_layer_network(key, hidden=("relu", "relu"))
    assert jax.tree.structure(relu) == jax.tree.structure(again)


def test_core_dataclass_has_static_fields_keys_and_replace():
    @hopfield.dataclass
    class Pair:
        w: jax.Array
        name: str = struct.field(pytree_node=False, default="a")

    pair = Pair(jnp.ones(2))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(pair)
    assert [jax.tree_util.keystr(path) for path, _ in leaves] == [".w"]
    assert treedef != jax.tree.structure(pair.replace(name="b"))  # static: in the structure
    assert jax.tree.unflatten(treedef, [jnp.zeros(2)]).name == "a"
    with pytest.raises(dataclasses.FrozenInstanceError):
        pair.w = jnp.zeros(2)


# ---------------------------------------------------------------------------------------------
# Checks that speak the core's language; one synapse on several layer pairs.


@pytest.mark.parametrize(
    "states, match",
    [
        ({"x": jnp.ones((2, D, S))}, r"state 'x' has shape \(2, 4, 6\), but layer 'x' is \(6, 4\)"),
        ({"x": jnp.ones((2, S, D)), "tok": jnp.ones((3, T, D))}, "batch shape"),
        (
            {"y": jnp.ones((2, S, D))},
            r"unknown layer 'y'|subset of \['x', 'tok', 'chn'\]; got \['y'\]",
        ),
    ],
)
def test_states_of_the_wrong_shape_are_a_one_line_error(states, match):
    net = parallel_mixer_block(jax.random.PRNGKey(0))
    for call in (net.currents, lambda xs: reduction.solve_fast(net, xs)):
        with pytest.raises(ValueError, match=match) as info:
            call(states)
        assert "\n" not in str(info.value)


def test_a_synapse_class_that_is_not_a_pytree_is_caught_at_construction():
    class Unregistered(Bilinear):  # a subclass without @hopfield.dataclass: one leaf to jax
        pass

    layers = {
        "x": Layer(lagrangians.LayerNorm(axis=None), (S, D)),
        "tok": Layer(lagrangians.Softplus(), (T, D)),
    }
    w = _normal(jax.random.PRNGKey(9), (S, T))
    with pytest.raises(ValueError, match=r"not a registered pytree.*@hopfield.dataclass") as info:
        Network(layers, {"s": Unregistered(w)})
    assert "\n" not in str(info.value)


def test_one_synapse_couples_several_layer_pairs():
    keys = random_draws.split(jax.random.PRNGKey(30), 4)
    w = _normal(keys[0], (4, 4))
    layers = {n: Layer(lagrangians.Tanh(), (4,)) for n in "abc"}
    shared = Network(
        layers,
        {"w": Dense(w)},
        connections={"ab": ("w", ("a", "b")), "bc": ("w", ("b", "c"))},
    )
    copies = Network(layers, {"ab": Dense(w, pre="a", post="b"), "bc": Dense(w, pre="b", post="c")})
    xs = {n: random_draws.normal(k, (2, 4)) for n, k in zip("abc", keys[1:])}
    # The same sums in the same order: bit for bit.
    chex.assert_trees_all_equal(shared.currents(xs), copies.currents(xs))
    chex.assert_trees_all_equal(shared.energy_terms(xs), copies.energy_terms(xs))
    # The shared kernel's gradient is the sum of the two copies' gradients.
    grad = jax.grad(lambda net: jnp.sum(net.energy(xs)))
    g_shared, g_copies = grad(shared).synapses, grad(copies).synapses
    np.testing.assert_allclose(
        g_shared["w"].weight, g_copies["ab"].weight + g_copies["bc"].weight, rtol=1e-6, atol=1e-6
    )
    solve = dict(max_steps=50, tol=1e-6)
    fast_shared, _ = reduction.solve_fast(shared, {"a": xs["a"]}, **solve)
    fast_copies, _ = reduction.solve_fast(copies, {"a": xs["a"]}, **solve)
    chex.assert_trees_all_equal(fast_shared, fast_copies)
    with pytest.raises(ValueError, match="gives 3 layers to synapse 'w', which couples 2"):
        Network(layers, {"w": Dense(w)}, connections={"abc": ("w", ("a", "b", "c"))})
