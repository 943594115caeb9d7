"""Attention energies (hopfield.attention): the multi-head attention synapse against its closed
form (a float64 loop) and its hand-written current against autodiff, the Energy Transformer
block's reduced energy, and its monotone descent."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imixer_jax.hopfield import Layer, Network, attention, lagrangians, reduction
from tests import random_draws

F32_EPS = float(jnp.finfo(jnp.float32).eps)
H, Y, D, N, K = 2, 3, 4, 5, 6


def _kernels(seed: int, scale: float = 1.0):
    keys = random_draws.split(jax.random.PRNGKey(seed), 3)
    query = scale * random_draws.normal(keys[0], (H, Y, D)) / np.sqrt(D)
    key = scale * random_draws.normal(keys[1], (H, Y, D)) / np.sqrt(D)
    memory = random_draws.normal(keys[2], (D, K)) / np.sqrt(D)
    return query, key, memory


def _loop_energy(query, key, g, beta, self_mask) -> float:
    """E_att in float64, one head, query and key at a time (the paper's formula)."""
    q, k, g = (np.asarray(a, np.float64) for a in (query, key, g))
    total = 0.0
    for h, c in itertools.product(range(H), range(N)):
        scores = [
            beta * (k[h] @ g[b]) @ (q[h] @ g[c]) for b in range(N) if not (self_mask and b == c)
        ]
        total += np.log(np.sum(np.exp(scores)))
    return -total / beta


@pytest.mark.parametrize("self_mask", [False, True])
def test_energy_is_the_closed_form(self_mask):
    query, key, _ = _kernels(0, scale=3.0)
    g = random_draws.normal(jax.random.PRNGKey(1), (N, D))
    syn = attention.MultiHeadAttention(query, key, self_mask=self_mask)
    expected = _loop_energy(query, key, g, 1 / np.sqrt(Y), self_mask)
    # float32 scores (sums of D * Y products) and a sum of H * N log-sum-exps of O(|E| / (H N))
    # each: the relative error is a few tens of float32 epsilons at most.
    np.testing.assert_allclose(jax.jit(syn.energy)(g), expected, rtol=64 * F32_EPS)
    beta = attention.MultiHeadAttention(query, key, beta=0.7, self_mask=self_mask)
    expected = _loop_energy(query, key, g, 0.7, self_mask)
    np.testing.assert_allclose(jax.jit(beta.energy)(g), expected, rtol=64 * F32_EPS)


@pytest.mark.parametrize("self_mask", [False, True])
def test_closed_form_current_is_minus_the_gradient(self_mask):
    query, key, _ = _kernels(2, scale=3.0)
    syn = attention.MultiHeadAttention(query, key, self_mask=self_mask)
    g = random_draws.normal(jax.random.PRNGKey(3), (4, N, D))
    (closed,) = jax.jit(syn.currents)(g)  # batched: the closed form takes leading axes
    auto = jax.jit(jax.vmap(lambda gi: -jax.grad(syn.energy)(gi)))(g)
    assert closed.shape == g.shape
    # Both are sums of H * N products of softmax weights (<= 1) and O(|K|, |Q|) vectors, rounded
    # in different orders: a few tens of epsilons of the largest term.
    scale = float(jnp.max(jnp.abs(auto)))
    np.testing.assert_allclose(closed, auto, rtol=0, atol=64 * F32_EPS * scale)
    # The batched energy is the per-sample one.
    np.testing.assert_allclose(
        jax.jit(syn.energy)(g), jax.jit(jax.vmap(syn.energy))(g), rtol=4 * F32_EPS
    )


def test_kernels_and_beta_are_leaves_that_take_gradients_under_jit():
    query, key, _ = _kernels(4)
    syn = attention.MultiHeadAttention(query, key, beta=1.5)
    g = random_draws.normal(jax.random.PRNGKey(5), (N, D))
    grads = jax.jit(jax.grad(lambda s: s.energy(g)))(syn)
    assert isinstance(grads, attention.MultiHeadAttention)
    assert grads.query.shape == (H, Y, D) and float(jnp.abs(grads.key).sum()) > 0
    assert grads.beta.shape == ()
    # beta None (1 / sqrt(Y)) survives flattening: no leaf, the same energy.
    default = attention.MultiHeadAttention(query, key)
    assert len(jax.tree.leaves(default)) == 2
    np.testing.assert_allclose(
        jax.jit(lambda s: s.energy(g))(default),
        attention.MultiHeadAttention(query, key, beta=1 / np.sqrt(Y)).energy(g),
        rtol=4 * F32_EPS,
    )


@pytest.mark.parametrize(
    "query_shape, layer_shape, self_mask, message",
    [
        ((H, Y, D + 1), (N, D), False, "query and key must both be"),
        ((H, Y, D), (N, D + 1), False, "layer must be \\[tokens, D=4\\]"),
        ((H, Y, D), (1, D), True, "self_mask needs at least 2 tokens"),
    ],
)
def test_wrong_shapes_are_one_line_errors(query_shape, layer_shape, self_mask, message):
    query = jnp.zeros(query_shape)
    key = jnp.zeros((H, Y, D))
    syn = attention.MultiHeadAttention(query, key, self_mask=self_mask)
    with pytest.raises(ValueError, match=message) as e:
        Network({"tokens": Layer(lagrangians.Identity(), layer_shape)}, {"a": syn})
    assert "\n" not in str(e.value)


def test_block_reduced_energy_is_the_energy_transformers():
    query, key, memory = _kernels(6)
    net = attention.block(N, query, key, memory, gamma=1.3, delta=0.1 * jnp.arange(D), eps=1e-5)
    x = 2.0 * random_draws.normal(jax.random.PRNGKey(7), (3, N, D))
    visible = {attention.TOKENS: x}
    assert (
        reduction.solve_fast(net, visible)[1] is None
    )  # the memories read only the tokens: closed form
    reduced = jax.jit(lambda v: net.reduced_energy(v, reduction.solve_fast(net, v)[0]))(visible)
    xc = x - x.mean(-1, keepdims=True)
    var = jnp.mean(xc * xc, -1)
    g = 1.3 * xc / jnp.sqrt(var[..., None] + 1e-5) + 0.1 * jnp.arange(D)
    syn = net.synapses[attention.ATTENTION]
    expected = (
        syn.energy(g)
        - 0.5 * jnp.sum(jax.nn.relu(g @ memory) ** 2, axis=(1, 2))
        - jnp.sum(D * 1.3 * 1e-5 / jnp.sqrt(var + 1e-5), axis=-1)  # LayerNorm neuron term
    )
    # Terms of O(10) summed in another order: float32 rounding of the largest.
    np.testing.assert_allclose(reduced, expected, rtol=32 * F32_EPS)


@pytest.mark.parametrize("self_mask", [False, True])
def test_block_descends_its_energy(self_mask):
    query, key, memory = _kernels(8, scale=2.0)
    net = attention.block(N, query, key, memory, self_mask=self_mask)
    x = 2.0 * random_draws.normal(jax.random.PRNGKey(9), (3, N, D))
    energies, _, _ = reduction.reduced_descend(net, {attention.TOKENS: x}, dt=0.05, num_steps=200)
    # Monotone up to the float32 rounding of the energy itself (a sum of O(H N + N K) terms).
    slack = 256 * F32_EPS * (1.0 + jnp.abs(energies[1:]))
    assert bool(jnp.all(jnp.diff(energies, axis=0) <= slack))
    assert bool(jnp.all(energies[-1] < energies[0] - 1.0))


def test_energy_transformer_step_descends_too():
    """x <- x + dt I (no leak, the Energy Transformer's x -= dt dE/dg) lowers the energy up to a
    term of order eps of the LayerNorm (docs/theory.md#attention-energies)."""
    query, key, memory = _kernels(10, scale=2.0)
    net = attention.block(N, query, key, memory)
    x = 2.0 * random_draws.normal(jax.random.PRNGKey(11), (3, N, D))

    def step(x, _):
        fast, _ = reduction.solve_fast(net, {attention.TOKENS: x})
        energy = net.reduced_energy({attention.TOKENS: x}, fast)
        current = reduction.reduced_currents(net, {attention.TOKENS: x}, fast)[attention.TOKENS]
        return x + 0.02 * current, energy

    _, energies = jax.jit(lambda x: jax.lax.scan(step, x, None, length=200))(x)
    slack = 256 * F32_EPS * (1.0 + jnp.abs(energies[1:]))
    assert bool(jnp.all(jnp.diff(energies, axis=0) <= slack))
    assert bool(jnp.all(energies[-1] < energies[0] - 1.0))
