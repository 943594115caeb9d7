"""Fixed-point solver: values, residuals, stopping, and unrolled / implicit / finite-difference
gradients."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imixer_jax.hopfield import HierarchicalNetwork, Layer, Synapse, fixed_point, lagrangians


def _imlp_like_network(key, dtype=jnp.float32, scale=0.8):
    """LN visible (D=3, S=6) -> GELU (T=5) -> GELU (H=4), untied, contracting feedback loop."""
    k = jax.random.split(key, 6)
    d, s, t, h = 3, 6, 5, 4

    def mat(kk, a, b, c=1.0):
        return (c * jax.random.normal(kk, (a, b)) / np.sqrt(a)).astype(dtype)

    layers = (
        Layer(lagrangians.LayerNorm(gamma=1.0, delta=0.1, axis=-2), (d, s)),
        Layer(lagrangians.GELU(), (d, t)),
        Layer(lagrangians.GELU(), (d, h)),
    )
    synapses = (
        Synapse(mat(k[0], s, t), mat(k[1], t, s), jnp.full((t,), 0.1, dtype), None),
        Synapse(mat(k[2], t, h, scale), mat(k[3], h, t, scale), jnp.full((h,), -0.1, dtype)),
    )
    net = HierarchicalNetwork(layers, synapses)
    x0 = jax.random.normal(k[4], (2, d, s), dtype)
    return net, x0


def _loss(net, x0, **solve):
    fast, _ = net.solve_fast_layers(x0, **solve)
    y = net.reduced_current(x0, fast)
    return jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape) / y.size)


def test_unrolled_fixed_count_matches_python_loop():
    net, x0 = _imlp_like_network(jax.random.PRNGKey(0))
    fast, sol = net.solve_fast_layers(x0, max_steps=3)
    g0 = net.layers[0].lagrangian.activation(x0)
    u = net.synapses[0].forward(g0)
    z = u
    for _ in range(3):  # the official FPA, written out: z <- u + F(z)
        hidden = jax.nn.gelu(net.synapses[1].forward(jax.nn.gelu(z, approximate=False)), False)
        z = u + net.synapses[1].backward(hidden)
    np.testing.assert_array_equal(fast[0], z)
    assert int(sol.steps) == 3
    chex.assert_shape(sol.residuals, (3,))
    assert bool(jnp.all(jnp.diff(sol.residuals) < 0))  # a contraction: steps shrink


def test_tolerance_stop_and_residual_reporting():
    net, x0 = _imlp_like_network(jax.random.PRNGKey(1))
    for adjoint in ("unrolled", "implicit"):
        _, sol = net.solve_fast_layers(x0, max_steps=100, tol=1e-5, adjoint=adjoint)
        steps = int(sol.steps)
        assert 1 < steps < 100
        assert float(sol.residual) <= 1e-5
        assert float(sol.residuals[steps - 2]) > 1e-5  # it did not stop late
        assert bool(jnp.all(jnp.isnan(sol.residuals[steps:])))
    # With a cap below convergence the residual is reported, not hidden.
    _, sol = net.solve_fast_layers(x0, max_steps=2, tol=1e-9, adjoint="implicit")
    assert int(sol.steps) == 2 and float(sol.residual) > 1e-9


def test_implicit_unrolled_and_finite_difference_gradients_agree():
    # Finite differences need float64: in float32 a step h gives errors ~eps/h ~ 1e-3.
    with jax.enable_x64(True):
        net, x0 = _imlp_like_network(jax.random.PRNGKey(2), dtype=jnp.float64)
        loss_implicit = lambda n, x: _loss(n, x, max_steps=300, tol=1e-13, adjoint="implicit")
        loss_unrolled = lambda n, x: _loss(n, x, max_steps=300, adjoint="unrolled")
        g_imp = jax.grad(loss_implicit, argnums=(0, 1))(net, x0)
        g_unr = jax.grad(loss_unrolled, argnums=(0, 1))(net, x0)
        # Both solve the same fixed point to ~1e-13 (asymptotic contraction rate ~0.8 here).
        chex.assert_trees_all_close(g_imp, g_unr, rtol=1e-9, atol=1e-11)

        # Directional finite difference along a random direction in (params, input).
        leaves, treedef = jax.tree.flatten(jax.tree.map(jnp.asarray, (net, x0)))
        keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
        direction = jax.tree.unflatten(
            treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
        )
        h = 1e-6
        plus = jax.tree.map(lambda a, d: a + h * d, (net, x0), direction)
        minus = jax.tree.map(lambda a, d: a - h * d, (net, x0), direction)
        fd = (loss_implicit(*plus) - loss_implicit(*minus)) / (2 * h)
        pairs = zip(jax.tree.leaves(g_imp), jax.tree.leaves(direction))
        analytic = sum(jnp.vdot(g, d) for g, d in pairs)
        # Central difference: truncation O(h^2) ~ 1e-12, rounding ~ 1e-16 / h ~ 1e-10.
        np.testing.assert_allclose(analytic, fd, rtol=1e-6)


def test_implicit_gradient_in_float32_matches_unrolled():
    net, x0 = _imlp_like_network(jax.random.PRNGKey(4))
    g_imp = jax.grad(lambda n: _loss(n, x0, max_steps=300, tol=1e-6, adjoint="implicit"))(net)
    g_unr = jax.grad(lambda n: _loss(n, x0, max_steps=200, adjoint="unrolled"))(net)
    # Asymptotic contraction rate r ~ 0.85: 200 unrolled steps converge to float32 precision;
    # stopping at a relative step of 1e-6 leaves an error ~1e-6 r / (1 - r) ~ 6e-6 relative in
    # the forward and adjoint solves; 5e-5 is that with a safety factor ~10.
    chex.assert_trees_all_close(g_imp, g_unr, rtol=5e-5, atol=5e-5)


def test_generic_fixed_point_and_per_step_params():
    # z = cos(z) has the Dottie number as its fixed point.
    sol = fixed_point(lambda z, p: jnp.cos(z) * p, jnp.zeros(()), 1.0, max_steps=200, tol=1e-7)
    np.testing.assert_allclose(sol.value, 0.7390851, rtol=1e-5)
    scales = jnp.array([1.0, 2.0, 3.0])
    sol = fixed_point(lambda z, p, s: z * s + p, 1.0, 0.5, max_steps=3, per_step_params=scales)
    np.testing.assert_allclose(sol.value, ((1.0 * 1 + 0.5) * 2 + 0.5) * 3 + 0.5)
    with pytest.raises(ValueError, match="stationary"):
        fixed_point(
            lambda z, p, s: z, 1.0, 0.5, max_steps=3, adjoint="implicit", per_step_params=scales
        )
    with pytest.raises(ValueError, match="adjoint"):
        fixed_point(lambda z, p: z, 1.0, 0.5, max_steps=3, adjoint="anderson")


def test_two_layer_network_is_closed_form():
    layers = (Layer(lagrangians.ReLU(), (4,)), Layer(lagrangians.GELU(), (3,)))
    w = jax.random.normal(jax.random.PRNGKey(5), (4, 3))
    net = HierarchicalNetwork(layers, (Synapse(w, None, jnp.ones(3), jnp.ones(4)),))
    x0 = jax.random.normal(jax.random.PRNGKey(6), (2, 4))
    fast, sol = net.solve_fast_layers(x0, max_steps=0)
    assert sol is None
    expected = jax.nn.gelu(jax.nn.relu(x0) @ w + 1, approximate=False) @ w.T + 1
    np.testing.assert_allclose(net.reduced_current(x0, fast), expected, rtol=1e-6)
