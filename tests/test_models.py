"""Tests of the Mixer backbone, its initialisation and the variant registry."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from imixer_jax.hopfield import lagrangians
from imixer_jax.models import (
    Mixer,
    MixerBlock,
    MixerConfig,
    create_model,
    flops,
    layers,
    model_config,
    param_count,
)
from imixer_jax.models import __main__ as models_main
from imixer_jax.models.mixer import capture_intermediates, copy_variables
from imixer_jax.models.registry import ENERGY_TRANSFORMER_NAMES, PARAMIXER_NAMES, VARIANT_NAMES
from imixer_jax.models.spectral_norm import spectral_sigmas
from imixer_jax.models.token_mixers import IMLP
from tests import random_draws, tiny
from tests.commands import call
from tests.test_energy_transformer import closed_form_count as energy_transformer_count
from tests.test_paramixer import closed_form_count as paramixer_count

# A small iMixer: 16 tokens (32 px, patch 8), D 16, T 8, H 16, C 32, 2 blocks.
TINY = dict(tiny.MODEL)

# Exact counts, num_classes = 1000 (all variants) and 10 (iMixer, the official CIFAR-10 head).
PARAMS_1000 = {
    "mixer_s16": 18_528_264,
    "mixer_s32": 19_104_624,
    "mixer_b16": 59_880_472,  # these three: google-research/vision_transformer's published counts
    "mixer_b32": 60_293_428,
    "mixer_l16": 208_196_168,
    "mixer_l32": 206_939_264,
    "imixer_s16": 20_631_560,
    "imixer_s32": 21_207_920,
    "imixer_b16": 66_972_184,
    "imixer_b32": 67_385_140,
    "imixer_l16": 233_398_856,
    "imixer_l32": 232_141_952,
}
PARAMS_10 = {
    "imixer_s16": 20_123_690,  # official README: ~20M
    "imixer_s32": 20_700_050,
    "imixer_b16": 66_210_874,  # ~66M
    "imixer_b32": 66_623_830,
    "imixer_l16": 232_384_106,  # ~232M
    "imixer_l32": 231_127_202,
}


def closed_form_count(name: str, num_classes: int, img_size: int = 224) -> int:
    """Parameter count by arithmetic from the official architecture ."""
    num_blocks, dim = {"s": (8, 512), "b": (12, 768), "l": (24, 1024)}[name.split("_")[1][0]]
    patch = int(name[-2:])
    s, t, c = (img_size // patch) ** 2, dim // 2, 4 * dim
    h = 2 * t  # hidden_ratio 2
    block = 2 * dim + (s * t + t) + (t * s + s) + 2 * dim + (dim * c + c) + (c * dim + dim)
    if name.startswith("imixer"):
        block += (t * h + h) + (h * t + t)  # fc_sn1, fc_sn2 (spectral u, v are not params)
    stem = patch * patch * 3 * dim + dim
    return stem + num_blocks * block + 2 * dim + dim * num_classes + num_classes


def test_registry_names():
    expected = [
        f"{p}_{s}{n}" for p, s, n in itertools.product(("mixer", "imixer"), "sbl", (16, 32))
    ]
    assert sorted(VARIANT_NAMES) == sorted(expected)


def _large_ones_slow(names):
    """The L variants trace 24 blocks (10-15 s each on 2 cores): the slow set checks them."""
    return [pytest.param(n, marks=pytest.mark.slow) if "_l" in n else n for n in names]


@pytest.mark.parametrize("name", _large_ones_slow(VARIANT_NAMES))
def test_param_count_1000(name):
    assert closed_form_count(name, 1000) == PARAMS_1000[name]
    assert param_count(name, num_classes=1000) == PARAMS_1000[name]


@pytest.mark.parametrize("name", _large_ones_slow(sorted(PARAMS_10)))
def test_param_count_cifar10(name):
    assert closed_form_count(name, 10) == PARAMS_10[name]
    assert param_count(name, num_classes=10) == PARAMS_10[name]


@pytest.mark.slow
def test_cli_prints_every_variant_of_every_family(capsys):
    args = ["--num_classes=7", "--img_size=64"]
    call(models_main, *args)
    expected = {n: closed_form_count(n, 7, img_size=64) for n in VARIANT_NAMES}
    expected.update({n: paramixer_count(n, 7, img_size=64) for n in PARAMIXER_NAMES})
    expected.update(
        {n: energy_transformer_count(n, 7, img_size=64) for n in ENERGY_TRANSFORMER_NAMES}
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{n} {count}" for n, count in expected.items()]
    call(models_main, *args, "--table")
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["name", "family", "params", "GFLOPs/image"]
    table = {row.split()[0]: row.split()[1:] for row in rows}
    assert list(table) == list(expected)
    for name, (family, count, gflops) in table.items():
        config = model_config(name, num_classes=7, img_size=64)
        assert family == ("energy_transformer" if "energy" in name else name.split("_")[0])
        assert int(count) == expected[name]
        assert gflops == f"{flops.forward_flops(config) / 1e9:.2f}"
    assert {row[0] for row in table.values()} == {
        "mixer",
        "imixer",
        "vanillamixer",
        "paramixer",
        "symmixer",
        "asymmixer",
        "energy_transformer",
    }


def test_model_config_is_typed_and_overridden():
    for name in VARIANT_NAMES:
        assert type(model_config(name)) is MixerConfig
    config = model_config("imixer_b32", num_classes=10, n_iter=4)
    assert (config.num_classes, config.n_iter, config.patch_size) == (10, 4, 32)
    assert (config.hidden_dim, config.tokens_mlp_dim, config.channels_mlp_dim) == (768, 384, 3072)
    assert (config.token_mixer, config.drop_path_rate) == ("imlp", 0.1)
    with pytest.raises(ValueError, match="n_iters is not a MixerConfig field; did you mean n_iter"):
        model_config("imixer_s16", n_iters=3)
    with pytest.raises(ValueError, match="unknown model 'imixer_x16'"):
        model_config("imixer_x16")


def test_mixer_takes_its_config():
    config = model_config("imixer_s16", **TINY)
    model = Mixer(config, rngs=nnx.Rngs(0))
    assert model.config is config and model.num_tokens == config.num_tokens == 16
    with pytest.raises(TypeError, match="Mixer takes a MixerConfig") as info:
        Mixer(config.to_dict(), rngs=nnx.Rngs(0))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "override, match",
    [
        (dict(img_size=30), "img_size"),
        (dict(patch_size=0), "patch_size"),
        (dict(num_blocks=0), "num_blocks"),
        (dict(n_iter=-1), "n_iter"),
        (dict(n_power=0), "n_power"),
        (dict(token_mixer="attention"), "token_mixer"),
        (dict(adjoint="backprop"), "adjoint"),
        (dict(activation="tanh"), "activation"),
        (dict(update_rule="momentum"), "update_rule"),
        (dict(sn_coeff=0.0), "sn_coeff"),
        (dict(hidden_ratio=0.01), "hidden_ratio"),
        (dict(step_size=-1.0), "step_size"),
        (dict(tol=-1e-3), "tol"),
        (dict(drop_path_rate=1.0), "drop_path_rate"),
        (dict(dtype="int32"), "dtype"),
    ],
)
def test_constructor_validation(override, match):
    with pytest.raises(ValueError, match=match) as info:
        create_model("imixer_s16", rngs=nnx.Rngs(0), **{**TINY, **override})
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def imixer_s16():
    model = create_model("imixer_s16", rngs=nnx.Rngs(0))
    model.eval()
    return model


def test_imixer_s16_forward_224(imixer_s16):
    images = random_draws.uniform(jax.random.key(1), (2, 224, 224, 3), minval=-1.0, maxval=1.0)
    forward = nnx.jit(lambda m, x: m(x))
    logits = forward(imixer_s16, images)
    assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
    # The head is zero-initialised, so the initial logits are exactly zero.
    np.testing.assert_array_equal(logits, 0.0)
    # With a random head the logits are finite and depend on the image.
    model = nnx.clone(imixer_s16)
    _randomise_head(model)
    logits = forward(model, images)
    assert np.all(np.isfinite(logits))
    assert not np.allclose(logits[0], logits[1])


def test_initialisation(imixer_s16):
    m = imixer_s16
    np.testing.assert_array_equal(m.head.kernel[...], 0.0)
    np.testing.assert_array_equal(m.head.bias[...], 0.0)
    np.testing.assert_array_equal(m.stem.bias[...], 0.0)
    for norm in (m.norm, m.blocks[0].norm, m.blocks[0].token_mixer.norm):
        np.testing.assert_array_equal(norm.scale[...], 1.0)
        np.testing.assert_array_equal(norm.bias[...], 0.0)
    # Stem: truncated normal (|z| <= 2) with std exactly 1/sqrt(fan_in), fan_in = 16*16*3.
    kernel = np.asarray(m.stem.kernel[...])
    std = 1 / np.sqrt(16 * 16 * 3)
    # 393,216 samples: the std estimate's relative error is ~1/sqrt(2n) = 0.1%; allow 1%.
    np.testing.assert_allclose(kernel.std(), std, rtol=1e-2)
    assert np.abs(kernel).max() <= 2 * std / 0.87962566103423978 + 1e-7
    # Channel MLP: xavier_uniform kernels, biases normal(1e-6).
    mlp = m.blocks[0].channel_mlp
    bound = np.sqrt(6 / (512 + 2048))
    fc_c1 = np.asarray(mlp.fc_c1.kernel[...])
    assert np.abs(fc_c1).max() <= bound
    np.testing.assert_allclose(fc_c1.std(), bound / np.sqrt(3), rtol=1e-2)  # 1M samples
    for bias in (mlp.fc_c1.bias[...], mlp.fc_c2.bias[...]):
        assert 0 < np.abs(bias).max() < 1e-5  # std 1e-6: 2048 samples stay below 5 std


def _tiny(**overrides) -> Mixer:
    return create_model("imixer_s16", rngs=nnx.Rngs(0), **{**TINY, **overrides})


def _randomise_head(model: Mixer) -> None:
    """Replace the zero head by a random one, so that logits depend on the features."""
    kernel = model.head.kernel
    kernel[...] = random_draws.normal(jax.random.key(7), kernel.shape)


# A training-mode forward retraces its loops (power iteration, fixed point) on every eager call;
# jitted, it compiles once per model structure and each further call reuses the program.
_train_forward = nnx.jit(lambda model, images, rngs: model(images, rngs=rngs))


def _images(batch: int, key: int = 1) -> jax.Array:
    return random_draws.uniform(jax.random.key(key), (batch, 32, 32, 3), minval=-1.0, maxval=1.0)


def test_capture_intermediates_returns_logits_and_per_block_intermediates():
    model = _tiny()
    model.eval()
    images = _images(2)
    logits, sown = capture_intermediates(model, images)
    np.testing.assert_array_equal(logits, model(images))
    blocks = nnx.to_pure_dict(sown)["blocks"]
    assert sorted(blocks) == [0, 1]
    assert blocks[0]["token_mixer"]["residuals"].shape == (2,)  # one per fixed-point step
    assert set(blocks[1]["token_mixer"]) == {"residuals", "steps", "fc_sn1", "fc_sn2"}
    # Sowing is off by default and the view leaves the model's own flag alone.
    assert not model.blocks[0].token_mixer.sow_intermediates
    assert not jax.tree.leaves(nnx.state(model, nnx.Intermediate))


def test_capture_intermediates_under_jit_matches_eager():
    model = _tiny(tied=True, update_rule="euler", step_size=0.5)
    model.eval()
    images = _images(2)
    eager = nnx.to_pure_dict(capture_intermediates(model, images)[1])
    jitted = nnx.to_pure_dict(nnx.jit(capture_intermediates)(model, images)[1])
    energy = eager["blocks"][1]["token_mixer"]["energy_before"]
    assert energy.shape == (2,)  # one reduced energy per image
    # Same computation inside and outside jit: equal up to float32 fusion round-off.
    chex.assert_trees_all_close(eager, jitted, rtol=1e-5, atol=1e-6)


def test_deterministic_view_stops_power_iteration_and_drop_path():
    model = _tiny(drop_path_rate=0.5)
    _randomise_head(model)
    images = _images(2)
    view = nnx.view(model, deterministic=True)
    sn = model.blocks[0].token_mixer.fc_sn1
    assert view.blocks[0].token_mixer.fc_sn1.deterministic and not sn.deterministic
    u = np.asarray(sn.u[...])
    first = view(images)
    np.testing.assert_array_equal(sn.u[...], u)  # no power-iteration step in the view
    np.testing.assert_array_equal(view(images), first)  # and no drop path
    model.eval()
    np.testing.assert_array_equal(model(images), first)
    model.train()
    model(images, rngs=nnx.Rngs(dropout=0))
    assert not np.array_equal(sn.u[...], u)  # the training-mode model itself still iterates


def test_mlp_mixer_uses_token_mlp():
    model = _tiny(token_mixer="mlp")
    assert not any(isinstance(b.token_mixer, IMLP) for b in model.blocks)
    assert not hasattr(model.blocks[0].token_mixer, "fc_sn1")


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_channel_mlp_is_the_nnx_mlp(dtype):
    """The core-built channel MLP computes nnx's LayerNorm -> Linear -> GELU -> Linear, on the
    tokens as rows of one matrix: the same GEMMs and elementwise arithmetic. The gradients of
    the biases sum over B x S = 8 rows as [2, 4] in the core and as [8] here, so float32 values
    may differ by a few ulps of O(1) numbers (2.4e-7 seen): 1e-6. bfloat16: 2 ulps (2^-7)."""
    rngs = nnx.Rngs(0)
    norm = layers.layer_norm(8, dtype=dtype, rngs=rngs)
    mlp = layers.ChannelMLP(8, 16, dtype=dtype, rngs=rngs)
    x = random_draws.normal(jax.random.key(1), (2, 4, 8))
    cotangent = random_draws.normal(jax.random.key(2), (2, 4, 8))

    graphdef, params = nnx.split((norm, mlp))

    def core(x, params):
        norm, mlp = nnx.merge(graphdef, params)
        return mlp(x, norm)

    def explicit(x, params):
        norm, mlp = nnx.merge(graphdef, params)
        rows = norm(x).reshape(-1, x.shape[-1])  # [B * S, D]: one GEMM per Linear
        return mlp.fc_c2(lagrangians.gelu(mlp.fc_c1(rows))).reshape(x.shape)

    def grads(f):
        def g(x, params):
            y, pull = jax.vjp(f, x, params)
            return y, pull(cotangent.astype(y.dtype))

        return g

    want, got = (jax.jit(grads(f))(x, params) for f in (explicit, core))
    tol = 1e-6 if dtype is None else 2.0**-7
    chex.assert_trees_all_close(got, want, rtol=tol, atol=tol)


def test_drop_path_eval_is_deterministic():
    model = _tiny(drop_path_rate=0.5)
    _randomise_head(model)
    model.eval()
    # The batch of the other eager tests: eager calls compile each op once per input shape.
    images = _images(2)
    a = model(images)
    b = model(images, rngs=nnx.Rngs(dropout=1))
    np.testing.assert_array_equal(a, b)


def test_drop_path_scaling():
    rate = 0.25
    dp = layers.drop_path(rate)
    x = jnp.ones((4096, 3, 5))
    y = np.asarray(dp(x, rngs=nnx.Rngs(dropout=0)))
    per_sample = y.reshape(len(y), -1)
    # Whole samples are dropped or kept, and survivors are scaled by exactly 1 / (1 - rate).
    assert np.all(per_sample == per_sample[:, :1])
    assert set(np.unique(per_sample)) == {0.0, np.float32(1 / (1 - rate))}
    # Kept fraction: binomial(4096, 0.75) has std 0.0068; allow 4 std.
    assert abs((per_sample[:, 0] > 0).mean() - (1 - rate)) < 0.03


def test_drop_path_in_block_drops_whole_branches():
    rate = 0.5
    keep = 1 - rate
    block = MixerBlock(
        IMLP(16, 16, 8, rngs=nnx.Rngs(0)), 16, 32, drop_path_rate=rate, rngs=nnx.Rngs(1)
    )
    block.eval()  # power iteration off: the token branch is the same in both modes
    x = random_draws.normal(jax.random.key(2), (64, 16, 16))
    y = block.token_mixer(x)
    block.drop_path.deterministic = False  # training-mode drop path only
    out = block(x, rngs=nnx.Rngs(dropout=3))
    # The four candidate outputs of every sample (token branch kept or dropped, channel branch
    # kept or dropped), each computed for the whole batch at once: 4 eager calls, not 4 x 64.
    candidates = {}
    for m1, m2 in itertools.product((0, 1), repeat=2):
        x1 = x + m1 * y / keep
        candidates[m1, m2] = np.asarray(x1 + m2 * block.channel_mlp(x1, block.norm) / keep)
    seen = set()
    for i in range(len(x)):
        # Same float32 ops in a different order: agreement to ~1e-6 relative to |x| ~ 1.
        matches = [m for m, cand in candidates.items() if np.allclose(out[i], cand[i], atol=1e-5)]
        assert len(matches) == 1, (i, matches)
        seen.add(matches[0])
    assert seen == {(0, 0), (0, 1), (1, 0), (1, 1)}  # 64 samples: all four patterns occur


def test_train_mode_with_drop_path_runs_and_differs_per_key():
    model = _tiny(drop_path_rate=0.5)
    _randomise_head(model)
    model.train()
    images = _images(8)
    a = _train_forward(model, images, nnx.Rngs(dropout=0))
    b = _train_forward(model, images, nnx.Rngs(dropout=1))
    assert np.all(np.isfinite(a)) and not np.allclose(a, b)


def test_bfloat16_compute_float32_params():
    model = _tiny(dtype="bfloat16")
    _randomise_head(model)
    model.eval()
    params = nnx.state(model, nnx.Param)
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    images = _images(2)
    # Jitted: eagerly every bfloat16 op would compile on its own (the float32 ones are cached).
    logits = nnx.jit(lambda m, x: m(x))(model, images)
    assert logits.dtype == jnp.float32
    reference = _tiny(dtype=None)
    reference.eval()
    nnx.update(reference, nnx.state(model))
    expected = reference(images)
    # bfloat16 keeps 8 significant bits (relative rounding 2^-9 = 0.2% per op); the logits are a
    # sum of 16 unit-scale features times N(0, 1) weights (scale ~4) after 2 blocks of a few
    # dozen rounded ops each: a few percent of the logit scale. Allow 5%.
    np.testing.assert_allclose(logits, expected, atol=0.05 * np.abs(expected).max())


def _copy_of(model: Mixer, **layout) -> Mixer:
    # copy_variables overwrites every variable: an abstract target skips the eager initialisation
    # (for the scanned layout a vmapped init that compiles op by op, ~10 s on 2 cores).
    other = nnx.eval_shape(lambda: _tiny(**layout))
    copy_variables(model, other)
    return other


@pytest.mark.parametrize("layout", [dict(scan_blocks=True), dict(scan_blocks=True, remat="block")])
def test_scanned_layout_matches_per_block_layout(layout):
    model = _tiny(num_blocks=3)
    _randomise_head(model)
    scanned = _copy_of(model, num_blocks=3, **layout)
    kernel = nnx.to_pure_dict(nnx.state(scanned))["blocks"]["token_mixer"]["fc_sn1"]["kernel"]
    chex.assert_shape(kernel, (3, 8, 16))  # [num_blocks, T, H]
    np.testing.assert_array_equal(kernel[1], model.blocks[1].token_mixer.fc_sn1.kernel[...])
    images = _images(2)
    model.eval()
    scanned.eval()
    # Same arithmetic in a loop and under scan; XLA may fuse it differently: float32 round-off
    # (~1e-7 relative) through 3 blocks of a few dozen ops each.
    np.testing.assert_allclose(scanned(images), model(images), rtol=1e-5, atol=1e-5)
    sigmas, stacked_sigmas = spectral_sigmas(model), spectral_sigmas(scanned)
    assert sorted(stacked_sigmas) == sorted(sigmas)  # blocks/i/token_mixer/fc_sn1, ...
    chex.assert_trees_all_close(stacked_sigmas, sigmas, rtol=1e-6)  # vmapped dot: round-off
    back = _copy_of(scanned, num_blocks=3)
    back.eval()
    np.testing.assert_array_equal(back(images), model(images))  # the round trip is exact


@pytest.mark.slow  # covered in the default set by the scanned-layout equality test
def test_scanned_training_forward_advances_each_blocks_spectral_vectors():
    model = _tiny(drop_path_rate=0.0)
    scanned = _copy_of(model, scan_blocks=True, drop_path_rate=0.0)
    images = _images(2)
    model(images)
    scanned(images)
    stacked = scanned.blocks.token_mixer.fc_sn2
    for i, block in enumerate(model.blocks):
        # Same power iteration per block, inside a scan: round-off only.
        np.testing.assert_allclose(stacked.u[...][i], block.token_mixer.fc_sn2.u[...], atol=1e-6)
        assert not np.allclose(stacked.u[...][i], _tiny().blocks[i].token_mixer.fc_sn2.u[...])


@pytest.mark.slow  # covered in the default set by the scanned-layout equality test
def test_scanned_drop_path_differs_per_block():
    # Variables copied from the per-block layout (whose eager initialisation is cached), not
    # drawn by the scanned layout's vmapped initialisation (op by op, ~10 s on 2 cores).
    layout = dict(num_blocks=4, drop_path_rate=0.5)
    scanned = _copy_of(_tiny(**layout), scan_blocks=True, **layout)
    _randomise_head(scanned)
    images = _images(8)
    a = _train_forward(scanned, images, nnx.Rngs(dropout=0))
    b = _train_forward(scanned, images, nnx.Rngs(dropout=1))
    assert not np.allclose(a, b)  # the masks depend on the key ...
    scanned.eval()
    np.testing.assert_array_equal(scanned(images), scanned(images))  # ... and vanish in eval


@pytest.mark.parametrize(
    "remat", ["activations", pytest.param("token_mixer", marks=pytest.mark.slow), "block"]
)
def test_remat_keeps_loss_and_gradients(remat):
    model = _tiny(drop_path_rate=0.0)  # training mode: power iteration runs under remat too
    _randomise_head(model)
    other = _copy_of(model, remat=remat, drop_path_rate=0.0)
    images, labels = _images(2), jnp.arange(2)

    def grads(m):
        graphdef, params, rest = nnx.split(m, nnx.Param, ...)

        def loss(p):
            logits = nnx.merge(graphdef, p, rest, copy=True)(images)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        return jax.jit(jax.grad(loss))(params)

    # Recomputation repeats the same float32 ops; fusion may differ: round-off only.
    chex.assert_trees_all_close(grads(other), grads(model), rtol=1e-4, atol=1e-7)


def test_capture_intermediates_rejects_scanned_layout():
    with pytest.raises(ValueError, match="scan_blocks=False"):
        # The check looks at the layout only: an abstract model (nothing initialised) suffices.
        capture_intermediates(nnx.eval_shape(lambda: _tiny(scan_blocks=True)), _images(1))


@pytest.mark.parametrize("bad", [dict(remat="all"), dict(scan_blocks=1)])
def test_layout_arguments_are_checked(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        _tiny(**bad)


_SHARDED_SCANNED_RUN = """
import json, os, sys
from configs import default
from imixer_jax.training import config as config_lib
from imixer_jax import training

c = default.get_config()
c.model = config_lib.model_section(
    "imixer_s16", num_classes=10, img_size=16, patch_size=4, num_blocks=2, hidden_dim=16,
    tokens_mlp_dim=8, channels_mlp_dim=32, n_power=2, drop_path_rate=0.2, scan_blocks=True,
    remat="token_mixer")
c.data.data_dir = sys.argv[1] + "/tfds"
os.makedirs(c.data.data_dir, exist_ok=True)
c.mesh.shape = (4, 2)
c.batch_size, c.eval_batch_size = 16, 120
c.schedule.update(unit="steps", length=3.0, warmup=1.0)
c.checkpoint.every_steps, c.eval_every_steps = 3, 0
result = training.train_and_evaluate(c, sys.argv[1] + "/run")
state = training.restore_state(training.prepare(c), sys.argv[1] + "/run")
fc_c1 = state.params["blocks"]["channel_mlp"]["fc_c1"]["kernel"]
u = state.rest["blocks"]["token_mixer"]["fc_sn1"]["u"]
print(json.dumps({"loss": result["train/loss"], "step": int(state.step),
    "devices": len(fc_c1.sharding.device_set), "spec": str(fc_c1.sharding.spec),
    "shape": list(fc_c1.shape), "u_shape": list(u.shape)}))
"""


@pytest.mark.slow
def test_scanned_model_trains_on_8_devices_and_checkpoints(tmp_path):
    """A tiny scanned, rematerialised iMixer trains 3 steps on 8 fake CPU devices, mesh (4, 2),
    and its checkpoint restores into the stacked layout with the stacked partition rules."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    out = subprocess.run(
        [sys.executable, "-c", _SHARDED_SCANNED_RUN, str(tmp_path)],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert np.isfinite(got["loss"]) and got["step"] == 3
    assert got["devices"] == 8 and got["shape"] == [2, 16, 32] and got["u_shape"] == [2, 16]
    assert got["spec"] == "P(None, None, 'model')"  # C split over 'model'


# One representative per family (every registered variant is one of these block kinds at other
# sizes); the iMLP with its default two unrolled fixed-point steps, paramixer with two repeats,
# the Energy Transformer with two descent steps.
FLOPS_FAMILIES = [
    ("mixer_s16", {}),
    ("imixer_s16", {}),
    ("imixer_s16", dict(tied=True)),
    ("vanillamixer_s16_224", {}),
    ("paramixer_s16_224_ni2", {}),
    ("symmixer_s16_224", {}),
    ("asymmixer_s16_224", {}),
    ("energy_transformer_s16", dict(n_iter=1)),
]
# Loops whose body runs once, so XLA's count (the body once) is exact: the Energy Transformer's
# descent (a rolled fori_loop) at n_iter=1.
ONE_TRIP_LOOPS = {"energy_transformer_s16": 1}


@pytest.mark.parametrize("name, kwargs", FLOPS_FAMILIES)
def test_analytic_flops_match_xla_count(name, kwargs):
    """``flops.forward_flops`` against XLA's ``cost_analysis()`` of the forward pass, one S/16
    block at 64 px (16 tokens). XLA counts a while-loop body once, so the program must have no
    loop (evaluation mode: no power iteration; the solver's unrolled fixed-point steps) but those
    of ``ONE_TRIP_LOOPS``. XLA
    also counts what the formula leaves out (LayerNorm, GELU, biases, residual adds: tens of
    FLOPs per activation against 2 D = 1,024 per matmul output), so it must be higher by a few
    percent to ~15%, never lower."""
    kwargs = dict(num_blocks=1, img_size=64, **kwargs)
    model = nnx.eval_shape(lambda: create_model(name, rngs=nnx.Rngs(0), **kwargs))
    model.eval()
    graphdef, state = nnx.split(model)
    images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    lowered = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, images)
    assert lowered.as_text().count("stablehlo.while") == ONE_TRIP_LOOPS.get(name, 0)
    xla = lowered.cost_analysis()["flops"]
    analytic = flops.forward_flops(model_config(name, **kwargs))
    assert 0.85 * xla < analytic <= xla
