"""Lagrangians: activation = gradient of L, convexity flags, closed-form neuron energies."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imixer_jax.hopfield import Lagrangian, from_fn, lagrangians
from tests import random_draws

LAGRANGIANS = {
    "identity": lagrangians.Identity(),
    "relu": lagrangians.ReLU(),
    "relu_power3": lagrangians.ReLUPower(3.0),
    "relu_power4": lagrangians.ReLUPower(4.0),
    "softplus": lagrangians.Softplus(),
    "tanh": lagrangians.Tanh(),
    "softmax": lagrangians.Softmax(beta=1.7, axis=-1),
    "softmax_axis0": lagrangians.Softmax(beta=0.6, axis=0),
    "spherical": lagrangians.Spherical(axis=-1),
    "spherical_all": lagrangians.Spherical(axis=(0, 1)),
    "layernorm": lagrangians.LayerNorm(gamma=1.3, delta=jnp.linspace(-1, 1, 7), axis=-1),
    "layernorm_axis0": lagrangians.LayerNorm(gamma=0.8, delta=0.2, axis=0),
    "layernorm_all": lagrangians.LayerNorm(gamma=0.7, delta=0.1, axis=None),
    "layernorm_tuple": lagrangians.LayerNorm(gamma=1.1, axis=(0, 1)),
    "gelu": lagrangians.GELU(),
    "exp": lagrangians.Exp(beta=0.7),
    "rectified_exp": lagrangians.RectifiedExp(beta=1.3),
    "from_fn_logcosh": from_fn(lambda x: jnp.log(jnp.cosh(x)), convex=True),
    "from_fn_sin": from_fn(jnp.sin),
}
CONVEX = {n for n, lag in LAGRANGIANS.items() if lag.convex}


def test_every_lagrangian_follows_the_protocol():
    for name, lag in LAGRANGIANS.items():
        assert isinstance(lag, Lagrangian), name


@pytest.mark.parametrize("name", sorted(LAGRANGIANS))
def test_activation_is_gradient_of_lagrangian(name):
    lag = LAGRANGIANS[name]
    x = 2.0 * random_draws.normal(jax.random.PRNGKey(0), (5, 7))
    # Both sides are O(1) sums of a few float32 ops: 1e-5 covers their rounding with margin.
    chex.assert_trees_all_close(lag.activation(x), jax.grad(lag)(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(LAGRANGIANS))
def test_convexity_flag_matches_the_hessian(name):
    """Convex <=> v^T Hess(L) v >= 0 for every v (Hess L = Jacobian of g). Sampled at states
    spread over [-3, 3] along dense random directions and single-coordinate ones (which find the
    negative curvature of an elementwise non-convex L that dense directions average away)."""
    lag = LAGRANGIANS[name]
    with jax.enable_x64(True):
        keys = random_draws.split(jax.random.PRNGKey(1), 3)
        xs = 3.0 * random_draws.normal(keys[0], (128, 5, 7), jnp.float64)
        dense = random_draws.normal(keys[1], (64, 5, 7), jnp.float64)
        one_hot = jax.nn.one_hot(jax.random.randint(keys[2], (64,), 0, 35), 35).reshape(64, 5, 7)
        vs = jnp.concatenate([dense, one_hot.astype(jnp.float64)])
        curv = jax.vmap(lambda x, v: jnp.vdot(v, jax.jvp(lag.activation, (x,), (v,))[1]))(xs, vs)
        # float64: round-off ~1e-14 of curvatures O(1); 1e-9 separates it from real negatives.
        assert bool(jnp.all(curv > -1e-9)) == lag.convex, float(curv.min())


def test_convex_set_is_the_expected_one():
    non_convex = {"gelu", "from_fn_sin"}
    assert set(LAGRANGIANS) - non_convex == CONVEX


@pytest.mark.parametrize("name", ["layernorm", "layernorm_axis0", "layernorm_all", "spherical"])
def test_closed_form_neuron_energy(name):
    lag = LAGRANGIANS[name]
    x = 3.0 + 2.0 * random_draws.normal(jax.random.PRNGKey(3), (5, 7))
    with jax.enable_x64(True):
        x64 = x.astype(jnp.float64)
        lag64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), lag)
        exact = jnp.vdot(x64, lag64.activation(x64)) - lag64(x64)
    closed = lag.neuron_energy(x)
    naive = jnp.vdot(x, lag.activation(x)) - lag(x)
    # The exact term is ~ -n eps / std ~ -1e-5: a few float32 ulps of it in closed form (1e-5
    # relative), while the float32 difference of two O(10) numbers errs by ~1e-6 absolute.
    np.testing.assert_allclose(closed, exact, rtol=1e-5)
    assert abs(float(naive) - float(exact)) > 10 * abs(float(closed) - float(exact))


def test_layernorm_over_a_whole_matrix_normalises_all_its_elements():
    x = random_draws.normal(jax.random.PRNGKey(4), (2, 5, 7))  # batch of two 5 x 7 states
    g = lagrangians.bind(lagrangians.LayerNorm(axis=None), 2).activation(x)
    np.testing.assert_allclose(g.mean(axis=(1, 2)), 0.0, atol=1e-6)
    np.testing.assert_allclose(g.var(axis=(1, 2)), 1.0, rtol=1e-4)  # eps 1e-6 of var ~1


def test_layernorm_with_per_channel_gain_has_no_lagrangian():
    lag = lagrangians.LayerNorm(gamma=jnp.ones((7,)))
    with pytest.raises(ValueError, match="only for a scalar gamma"):
        lag(jnp.ones((3, 7)))
    with pytest.raises(ValueError, match="only for a scalar gamma"):
        lag.neuron_energy(jnp.ones((3, 7)))


def test_get_by_name():
    assert isinstance(lagrangians.get("tanh"), lagrangians.Tanh)
    assert lagrangians.get("relu_power", power=4.0).power == 4.0
    with pytest.raises(ValueError, match="unknown Lagrangian 'swish'"):
        lagrangians.get("swish")


def test_exponential_lagrangians_are_hamuxs():
    x = random_draws.normal(jax.random.PRNGKey(40), (3, 5))
    beta = 1.3
    r = jnp.maximum(x, 0)
    # hamux's lagr_exp and lagr_rexp, written out.
    np.testing.assert_allclose(lagrangians.Exp(beta)(x), jnp.sum(jnp.exp(beta * x)) / beta, 1e-6)
    np.testing.assert_allclose(
        lagrangians.RectifiedExp(beta)(x), jnp.sum(jnp.exp(beta * r) / beta - r), rtol=1e-6
    )
    np.testing.assert_array_equal(lagrangians.RectifiedExp(beta).activation(-jnp.abs(x)), 0.0)
    assert lagrangians.get("exp", beta=2.0) == lagrangians.Exp(2.0)


def test_gelu_is_the_exact_gelu_to_float32_round_off():
    """``lagrangians.gelu`` (PyTorch's erf formula, hand-written slope) against GELU and its
    slope in float64 on a dense grid of [-10, 10]. ``1 + erf(x / sqrt 2)`` cancels for negative
    x: an absolute error of a few ulp of 1 (1.2e-7) times |x| <= 10 in the value, at most 2e-6;
    the slope ``Phi + x phi`` has no such product with x at large |x| (phi vanishes), 5e-7."""
    from scipy import special

    x = np.linspace(-10.0, 10.0, 400_001, dtype=np.float32)
    x64 = x.astype(np.float64)
    cdf = 0.5 * special.erfc(-x64 / np.sqrt(2.0))
    slope = cdf + x64 * np.exp(-0.5 * x64 * x64) / np.sqrt(2.0 * np.pi)
    np.testing.assert_allclose(jax.jit(lagrangians.gelu)(x), x64 * cdf, rtol=0, atol=2e-6)
    got_slope = jax.jit(jax.vmap(jax.grad(lagrangians.gelu)))(x)
    np.testing.assert_allclose(got_slope, slope, rtol=0, atol=5e-7)
    assert lagrangians.gelu(jnp.ones(3, jnp.bfloat16)).dtype == jnp.bfloat16
