"""Token mixers derived from the HHN: official iMLP semantics, vanilla limit, tied energy."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from imixer_jax.models.mixer import capture_intermediates
from imixer_jax.models.spectral_norm import power_iteration
from imixer_jax.models.token_mixers import IMLP, TokenMLP
from tests import random_draws

B, S, D, T = 2, 16, 8, 6


def _x(seed=0, scale=1.0):
    return scale * random_draws.normal(jax.random.PRNGKey(seed), (B, S, D))


def _gelu(x):
    return jax.nn.gelu(x, approximate=False)


def official_imlp(x, params, uv, *, n_iter, n_power, coeff, training):
    """Line-by-line the official PyTorch block's token path: LN over D, transpose, iMlp.forward,
    with the spectral-norm pre-hook running on every call of fc_sn1 / fc_sn2."""
    uv = {k: dict(v) for k, v in uv.items()}
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    h = (x - mean) / jnp.sqrt(var + 1e-6) * params["norm"]["scale"] + params["norm"]["bias"]
    h = jnp.swapaxes(h, 1, 2)

    def sn_call(name, inp):
        k = params[name]["kernel"]
        u, v = uv[name]["u"], uv[name]["v"]
        if training:
            u, v = power_iteration(k, u, v, n_power)
            uv[name] = {"u": u, "v": v}
        sigma = u @ (v @ k)
        return inp @ (k / jnp.maximum(1.0, sigma / coeff)) + params[name]["bias"]

    z = h @ params["fc1"]["kernel"] + params["fc1"]["bias"]
    z_in = z
    for _ in range(n_iter):
        z = sn_call("fc_sn2", _gelu(sn_call("fc_sn1", _gelu(z)))) + z_in
    y = _gelu(z) @ params["fc2"]["kernel"] + params["fc2"]["bias"]
    return jnp.swapaxes(y, 1, 2), uv


# Eager calls of a token mixer retrace (and recompile) its fixed-point loop on every call; these
# compile once per module structure, and every seed or case after the first reuses the program.
_forward = nnx.jit(lambda module, x: module(x))
_capture = nnx.jit(capture_intermediates)
# The reference too: eagerly, each of its power-iteration loops compiles anew.
_official = jax.jit(official_imlp, static_argnames=("n_iter", "n_power", "coeff", "training"))


def _params_and_uv(module):
    params = nnx.to_pure_dict(nnx.state(module, nnx.Param))
    uv = {
        name: {"u": getattr(module, name).u[...], "v": getattr(module, name).v[...]}
        for name in ("fc_sn1", "fc_sn2")
    }
    return params, uv


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("n_iter", [0, 1, 2, 4])
def test_imlp_reproduces_official_forward(n_iter, training):
    module = IMLP(S, D, T, n_iter=n_iter, n_power=3, rngs=nnx.Rngs(n_iter))
    # Non-trivial LN affine parameters and biases, so every term is exercised.
    module.norm.scale[...] = 1.0 + 0.1 * jnp.arange(D)
    module.norm.bias[...] = 0.05 * jnp.arange(D)
    module.fc_sn1.bias[...] = 0.1 * jnp.ones_like(module.fc_sn1.bias[...])
    if not training:
        module.eval()
    params, uv = _params_and_uv(module)
    x = _x(1)
    expected, expected_uv = _official(
        x, params, uv, n_iter=n_iter, n_power=3, coeff=0.9, training=training
    )
    got = _forward(module, x)
    # Same ops; only the LayerNorm reduction runs on the transposed layout: float32 rounding.
    chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-6)
    _, got_uv = _params_and_uv(module)
    chex.assert_trees_all_close(got_uv, expected_uv, rtol=1e-5, atol=1e-6)
    if not training or n_iter == 0:  # u, v advance only on training-mode calls
        chex.assert_trees_all_equal(got_uv, uv)


def test_imlp_with_zero_iterations_is_the_vanilla_token_mlp():
    imlp = IMLP(S, D, T, n_iter=0, rngs=nnx.Rngs(0))
    mlp = TokenMLP(S, D, T, rngs=nnx.Rngs(1))
    for name in ("norm", "fc1", "fc2"):
        nnx.update(getattr(mlp, name), nnx.state(getattr(imlp, name)))
    x = _x(2)
    np.testing.assert_array_equal(imlp(x), mlp(x))
    # ... and the vanilla token MLP is the official fc2(GELU(fc1(LN X))) with tokens mixed.
    ln = nnx.LayerNorm(D, epsilon=1e-6, rngs=nnx.Rngs(0))
    h = jnp.swapaxes(ln(x), 1, 2)
    y = _gelu(h @ mlp.fc1.kernel[...] + mlp.fc1.bias[...]) @ mlp.fc2.kernel[...]
    expected = jnp.swapaxes(y + mlp.fc2.bias[...], 1, 2)
    chex.assert_trees_all_close(mlp(x), expected, rtol=1e-5, atol=1e-6)


def test_parameter_layout_untied_and_tied():
    h = int(T * 2.0)
    untied = nnx.state(IMLP(S, D, T, rngs=nnx.Rngs(0)), nnx.Param)
    shapes = jax.tree.map(jnp.shape, nnx.to_pure_dict(untied))
    assert shapes == {
        "norm": {"scale": (D,), "bias": (D,)},
        "fc1": {"kernel": (S, T), "bias": (T,)},
        "fc2": {"kernel": (T, S), "bias": (S,)},
        "fc_sn1": {"kernel": (T, h), "bias": (h,)},
        "fc_sn2": {"kernel": (h, T), "bias": (T,)},
    }
    tied = nnx.to_pure_dict(nnx.state(IMLP(S, D, T, tied=True, rngs=nnx.Rngs(0)), nnx.Param))
    assert jax.tree.map(jnp.shape, tied)["fc2"] == {"bias": (S,)}
    assert jax.tree.map(jnp.shape, tied)["fc_sn2"] == {"bias": (T,)}
    assert jax.tree.map(jnp.shape, tied)["norm"]["scale"] == ()


def _tied_energy_change(activation, seed, step_size=0.05):
    module = IMLP(
        S,
        D,
        T,
        n_iter=400,
        tol=1e-7,
        adjoint="implicit",
        tied=True,
        activation=activation,
        update_rule="euler",
        step_size=step_size,
        rngs=nnx.Rngs(seed),
    )
    # Training-mode calls converge the power iteration: until then sigma is estimated from the
    # random initial u, v (as in the official code) and F need not be a contraction.
    for _ in range(4):
        _forward(module, _x(seed))
    module.eval()
    # Larger-than-init biases so the hidden layers sit in every regime of their activation.
    module.fc1.bias[...] = random_draws.normal(jax.random.PRNGKey(seed), (T,))
    _, sown = _capture(module, _x(seed, scale=2.0))
    info = nnx.to_pure_dict(sown)
    return info["energy_after"] - info["energy_before"], info


@pytest.mark.parametrize("activation", ["relu", pytest.param("softplus", marks=pytest.mark.slow)])
def test_tied_euler_step_lowers_reduced_energy_with_convex_lagrangians(activation):
    for seed in range(4):
        change, info = _tied_energy_change(activation, seed)
        assert float(info["residuals"][info["steps"] - 1]) < 1e-5  # the energy is at a fixed point
        assert bool(jnp.all(change < 0)), (seed, change)


@pytest.mark.slow  # covered in the default set by the toy network's GELU test
def test_tied_euler_step_with_gelu_is_reported_not_assumed(record_property):
    """GELU is not convex: no guarantee. Record what happens (the notebook shows it too)."""
    changes = jnp.concatenate([_tied_energy_change("gelu", seed)[0] for seed in range(4)])
    assert bool(jnp.all(jnp.isfinite(changes)))
    record_property("gelu_fraction_energy_decreased", float(jnp.mean(changes < 0)))


def test_untied_intermediates_have_no_energy_and_report_residuals_and_sigmas():
    module = IMLP(S, D, T, n_iter=3, rngs=nnx.Rngs(0))
    y, sown = _capture(module, _x())
    np.testing.assert_array_equal(y, _forward(IMLP(S, D, T, n_iter=3, rngs=nnx.Rngs(0)), _x()))
    info = nnx.to_pure_dict(sown)
    chex.assert_shape(info["residuals"], (3,))
    assert set(info) == {"residuals", "steps", "fc_sn1", "fc_sn2"}
    # The sown sigma is the layer's estimate after this call's power iteration.
    np.testing.assert_array_equal(info["fc_sn1"]["sigma"], module.fc_sn1.sigma())


def test_plain_call_sows_nothing():
    module = IMLP(S, D, T, n_iter=3, tied=True, rngs=nnx.Rngs(0))
    _, sown = nnx.capture(module, nnx.Intermediate)(_x())
    assert not jax.tree.leaves(sown)


@pytest.mark.parametrize("adjoint", ["unrolled", "implicit"])
def test_gradients_flow_to_every_parameter(adjoint):
    module = IMLP(S, D, T, n_iter=3, adjoint=adjoint, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def loss(p, r):  # r (u, v) is mutated by the training forward: pass it in, not closed over
        return jnp.sum(nnx.merge(graphdef, p, r, copy=True)(_x()) ** 2)

    grads = jax.jit(jax.grad(loss))(params, rest)  # one compiled program, not op by op
    for path, g in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(grads)):
        assert bool(jnp.all(jnp.isfinite(g))), path
        assert float(jnp.max(jnp.abs(g))) > 0, path


def _value_and_grads(module, x):
    """Jitted ``(sum sin(module(x)), its gradient in the parameters)``."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def loss(p, r):
        return jnp.sum(jnp.sin(nnx.merge(graphdef, p, r, copy=True)(x)))

    return jax.jit(jax.value_and_grad(loss))(params, rest)


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(tied=True, update_rule="euler", step_size=0.5), dict(adjoint="implicit")],
)
def test_recomputed_activations_keep_value_and_gradients(kwargs):
    x = _x(6)
    saved = _value_and_grads(IMLP(S, D, T, n_iter=3, rngs=nnx.Rngs(0), **kwargs), x)
    module = IMLP(S, D, T, n_iter=3, recompute_activations=True, rngs=nnx.Rngs(0), **kwargs)
    recomputed = _value_and_grads(module, x)
    # The same float32 ops, evaluated again in the backward pass and fused differently there:
    # gradients differ by round-off only (a few ulps; rtol 1e-5 of a loss ~1e1 is ~100 ulps).
    chex.assert_trees_all_close(recomputed, saved, rtol=1e-5, atol=1e-7)


def test_recomputed_activations_shrink_the_backward_pass_temporaries():
    """XLA's estimate of the temporaries of a gradient of an iMLP with n_iter = 2: recomputing the
    activations saves per fixed-point step the two matmul outputs only, not also the GELUs'
    outputs (0.66x measured on jaxlib 0.10.2 CPU; 0.55x when the GELU, then ``jax.nn.gelu``,
    also kept the erf and exp terms of its derivative, which ``lagrangians.gelu`` recomputes)."""
    x = random_draws.normal(jax.random.PRNGKey(7), (8, 64, 128))

    def temp_bytes(recompute_activations):
        module = IMLP(64, 128, 64, recompute_activations=recompute_activations, rngs=nnx.Rngs(0))
        graphdef, params, rest = nnx.split(module, nnx.Param, ...)

        def loss(p, r):
            return jnp.sum(jnp.sin(nnx.merge(graphdef, p, r, copy=True)(x)))

        compiled = jax.jit(jax.grad(loss)).lower(params, rest).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    assert temp_bytes(True) < 0.75 * temp_bytes(False)


def test_converged_implicit_and_unrolled_mixers_agree():
    unrolled = IMLP(S, D, T, n_iter=200, adjoint="unrolled", rngs=nnx.Rngs(3))
    implicit = IMLP(S, D, T, n_iter=200, tol=1e-7, adjoint="implicit", rngs=nnx.Rngs(4))
    x = _x(4)
    _forward(unrolled, x)  # a training forward converges the power iteration (1600 steps)
    nnx.update(implicit, nnx.state(unrolled))  # same parameters and u, v
    for m in (unrolled, implicit):
        m.eval()  # one stationary map for both

    def grad_of(m):
        graphdef, params, rest = nnx.split(m, nnx.Param, ...)

        def loss(p, r):
            return jnp.sum(jnp.sin(nnx.merge(graphdef, p, r, copy=True)(x)))

        return jax.jit(jax.grad(loss))(params, rest)

    # Both converge to the same fixed point; the implicit stop at a relative step of 1e-7 (about
    # float32 precision) leaves errors of a few ulps, amplified ~1/(1 - rate) in the adjoint.
    chex.assert_trees_all_close(_forward(unrolled, x), _forward(implicit, x), rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(grad_of(unrolled), grad_of(implicit), rtol=1e-4, atol=1e-6)


def test_bfloat16_compute_is_close_to_float32():
    x = _x(5)
    f32 = IMLP(S, D, T, rngs=nnx.Rngs(0))
    bf16 = IMLP(S, D, T, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    f32.eval()
    bf16.eval()
    y32, y16 = _forward(f32, x), _forward(bf16, x)
    assert y16.dtype == jnp.float32  # the residual stream stays float32
    # bfloat16 keeps 8 mantissa bits (relative 4e-3 per op); a few ops deep: 5e-2 of the scale.
    assert float(jnp.max(jnp.abs(y16 - y32))) < 5e-2 * float(jnp.max(jnp.abs(y32)))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(n_iter=-1), "n_iter"),
        (dict(tol=-1.0), "tol"),
        (dict(adjoint="broyden"), "adjoint"),
        (dict(activation="tanh"), "activation"),
        (dict(update_rule="rk4"), "update_rule"),
        (dict(step_size=0.0), "step_size"),
        (dict(sn_coeff=0.0), "sn_coeff"),
        (dict(n_power=0), "n_power"),
        (dict(hidden_ratio=0.01), "hidden_ratio"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        IMLP(S, D, T, rngs=nnx.Rngs(0), **kwargs)
