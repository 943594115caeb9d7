"""Soft spectral normalisation: convergence, soft threshold, modes, gradients, per-call schedule."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from imixer_jax.models.spectral_norm import SpectralNormLinear, power_iteration, spectral_sigmas
from tests import random_draws


def _layer(scale=1.0, n_power=8, seed=0, shape=(12, 7)):
    layer = SpectralNormLinear(*shape, n_power=n_power, rngs=nnx.Rngs(seed))
    layer.kernel[...] = scale * random_draws.normal(jax.random.PRNGKey(seed + 100), shape)
    return layer


def test_estimate_converges_to_largest_singular_value():
    layer = _layer(n_power=8)
    top = np.linalg.svd(np.asarray(layer.kernel[...]), compute_uv=False)[0]
    normalize = nnx.jit(lambda layer: layer.normalized_kernel())  # one compile, not op by op
    for _ in range(25):  # 200 power steps: the gap s1/s2 of a 12x7 Gaussian matrix suffices
        normalize(layer)
    # Power iteration converges like (s2/s1)^(2k); after 200 steps float32 rounding dominates.
    np.testing.assert_allclose(layer.sigma(), top, rtol=1e-5)
    kernel = layer.normalized_kernel()
    np.testing.assert_allclose(np.linalg.svd(np.asarray(kernel), compute_uv=False)[0], 0.9, 1e-5)


def test_no_rescaling_when_sigma_below_coeff():
    layer = _layer(scale=0.01)  # sigma ~ 0.05 < 0.9
    for _ in range(10):
        kernel = layer.normalized_kernel()
    assert float(layer.sigma()) < 0.9
    np.testing.assert_array_equal(kernel, layer.kernel[...])


def test_vectors_unchanged_in_evaluation_and_updated_in_training():
    layer = _layer()
    u0, v0 = layer.u[...], layer.v[...]
    layer.eval()
    layer(jnp.ones((3, 12)))
    layer.normalized_kernels(4)
    np.testing.assert_array_equal(layer.u[...], u0)
    np.testing.assert_array_equal(layer.v[...], v0)
    layer.train()
    layer(jnp.ones((3, 12)))
    assert float(jnp.max(jnp.abs(layer.u[...] - u0))) > 1e-3


def test_per_call_schedule_advances_n_power_steps_per_call():
    layer = _layer(n_power=3)
    u0, v0 = layer.u[...], layer.v[...]
    kernels = layer.normalized_kernels(4)
    chex.assert_shape(kernels, (4, 12, 7))
    u, v = u0, v0
    raw = layer.kernel[...]
    for k in range(4):  # each call: 3 power steps, then its own sigma
        u, v = power_iteration(raw, u, v, 3)
        sigma = u @ (v @ raw)
        np.testing.assert_allclose(kernels[k], raw / max(1.0, float(sigma) / 0.9), rtol=1e-6)
    np.testing.assert_allclose(layer.u[...], u, rtol=1e-6)
    np.testing.assert_allclose(layer.v[...], v, rtol=1e-6)


def test_no_gradient_through_vectors_and_sigma_differentiated_through_kernel():
    layer = _layer(scale=2.0)
    layer.eval()
    graphdef, params, vectors = nnx.split(layer, nnx.Param, ...)

    def sigma(p, r):
        return nnx.merge(graphdef, p, r, copy=True).sigma()

    g_params, g_vectors = jax.grad(sigma, argnums=(0, 1))(params, vectors)
    for g in jax.tree.leaves(g_vectors):
        np.testing.assert_array_equal(g, 0.0)
    # sigma = v^T K u, so d sigma / d K = v u^T.
    expected = jnp.outer(layer.v[...], layer.u[...])
    np.testing.assert_allclose(g_params["kernel"][...], expected, rtol=1e-6, atol=1e-7)


def test_spectral_sigmas_collects_every_normalised_layer():
    class Two(nnx.Module):
        def __init__(self):
            self.a = _layer(seed=1)
            self.b = nnx.List([_layer(seed=2)])

    two = Two()
    sigmas = spectral_sigmas(two)
    assert set(sigmas) == {"a", "b/0"}
    np.testing.assert_array_equal(sigmas["b/0"], two.b[0].sigma())
