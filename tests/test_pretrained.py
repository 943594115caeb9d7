"""Loading vit_jax / big_vision MLP-Mixer ``.npz`` checkpoints into ``mixer_*`` models.

The checkpoint is fabricated by a Linen reference written from vision_transformer's
``vit_jax/models_mixer.py`` (``MlpBlock``, ``MixerBlock``, ``MlpMixer``): its auto-generated module
names (``MixerBlock_0``, ``LayerNorm_0``, ``Dense_1``) are exactly the keys of the public files.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util

from imixer_jax.models import create_model
from imixer_jax.weights import formats
from imixer_jax.weights import vit_jax as pretrained

TINY = dict(img_size=16, patch_size=4, num_blocks=2, hidden_dim=8, tokens_mlp_dim=6)
TINY_MLP = 20


class MlpBlock(nn.Module):
    mlp_dim: int
    gelu: callable

    @nn.compact
    def __call__(self, x):
        y = self.gelu(nn.Dense(self.mlp_dim)(x))
        return nn.Dense(x.shape[-1])(y)


class MixerBlock(nn.Module):
    tokens_mlp_dim: int
    channels_mlp_dim: int
    gelu: callable

    @nn.compact
    def __call__(self, x):
        y = jnp.swapaxes(nn.LayerNorm()(x), 1, 2)
        y = MlpBlock(self.tokens_mlp_dim, self.gelu, name="token_mixing")(y)
        x = x + jnp.swapaxes(y, 1, 2)
        y = nn.LayerNorm()(x)
        return x + MlpBlock(self.channels_mlp_dim, self.gelu, name="channel_mixing")(y)


class MlpMixer(nn.Module):
    patch_size: int
    num_classes: int
    num_blocks: int
    hidden_dim: int
    tokens_mlp_dim: int
    channels_mlp_dim: int
    gelu: callable = nn.gelu  # vit_jax's: the tanh approximation

    @nn.compact
    def __call__(self, x):
        p = (self.patch_size, self.patch_size)
        x = nn.Conv(self.hidden_dim, p, strides=p, name="stem")(x)
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        for _ in range(self.num_blocks):
            x = MixerBlock(self.tokens_mlp_dim, self.channels_mlp_dim, self.gelu)(x)
        x = nn.LayerNorm(name="pre_head_layer_norm")(x).mean(axis=1)
        return nn.Dense(self.num_classes, name="head")(x)


exact_gelu = functools.partial(jax.nn.gelu, approximate=False)


def _reference(num_classes: int, gelu=exact_gelu) -> MlpMixer:
    t = dict(TINY)
    return MlpMixer(
        patch_size=t["patch_size"],
        num_classes=num_classes,
        num_blocks=t["num_blocks"],
        hidden_dim=t["hidden_dim"],
        tokens_mlp_dim=t["tokens_mlp_dim"],
        channels_mlp_dim=TINY_MLP,
        gelu=gelu,
    )


def _fabricated(num_classes: int, seed: int = 0):
    """(flat npz dict, linen params): the reference's parameter tree (shapes only, from
    ``eval_shape``) filled with random O(1) values, so that no mapping error hides behind a zero
    or a one (linen's head and LayerNorm inits)."""
    images = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
    shapes = jax.eval_shape(_reference(num_classes).init, jax.random.key(seed), images)["params"]
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda x: (0.5 * rng.standard_normal(x.shape)).astype(np.float32), shapes)
    flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(params).items()}
    return flat, params


def _model(num_classes: int, name: str = "mixer_s16"):
    """The model with shape-only parameters (``nnx.eval_shape``): loading replaces every one of
    them, as when fine-tuning, and nothing is spent on a random initialisation."""
    model = nnx.eval_shape(
        lambda: create_model(
            name,
            rngs=nnx.Rngs(3),
            num_classes=num_classes,
            channels_mlp_dim=TINY_MLP,
            drop_path_rate=0.0,
            **TINY,
        )
    )
    model.eval()
    return model


def _images(seed=5, batch=3):
    return jax.random.uniform(jax.random.key(seed), (batch, 16, 16, 3), minval=-1, maxval=1)


def test_fabricated_checkpoint_has_the_public_layout():
    flat, _ = _fabricated(7)
    assert "MixerBlock_1/token_mixing/Dense_0/kernel" in flat
    assert set(flat) == set(pretrained.vit_jax_names(2).values())


def test_logits_equal_the_vit_jax_forward(tmp_path):
    flat, params = _fabricated(7)
    path = tmp_path / "Mixer-T_4.npz"
    np.savez(path, **flat)
    model = _model(7)
    state = nnx.state(model, nnx.Param)
    loaded = pretrained.from_vit_jax(formats.read(str(path)).entries, state, head="keep")
    nnx.update(model, loaded)
    images = _images()
    ours = model(images)
    ref = _reference(7).apply({"params": params}, images)
    # float32 round-off: both sides run the same ~40 float32 ops per logit on O(1) values; the
    # two LayerNorm formulas (ours: centred variance; linen: E[x^2] - E[x]^2) differ by a few ulp
    # of the variance. 1e-5 is ~100 ulp at |logit| ~ 1-10, far below a mapping error (O(1)).
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(ref).max()) > 1.0  # the check is not vacuous


def test_vit_jax_tanh_gelu_is_the_only_difference():
    flat, params = _fabricated(7)
    model = _model(7)
    nnx.update(model, pretrained.from_vit_jax(flat, nnx.state(model, nnx.Param)))
    images = _images()
    tanh_ref = _reference(7, gelu=nn.gelu).apply({"params": params}, images)
    diff = float(jnp.abs(model(images) - tanh_ref).max())
    # |gelu_tanh - gelu_erf| <= 4.8e-4 per activation: visible, yet small next to O(1) logits.
    assert 1e-6 < diff < 0.05 * float(jnp.abs(tanh_ref).max())


def test_new_zero_head_for_other_classes():
    flat, _ = _fabricated(7)
    model = _model(3)
    loaded = pretrained.from_vit_jax(flat, nnx.state(model, nnx.Param))  # 'auto'
    pure = nnx.to_pure_dict(loaded)
    assert pure["head"]["kernel"].shape == (8, 3)
    assert not np.any(pure["head"]["kernel"]) and not np.any(pure["head"]["bias"])
    np.testing.assert_array_equal(pure["stem"]["kernel"], flat["stem/kernel"])
    np.testing.assert_array_equal(
        pure["blocks"][1]["channel_mlp"]["fc_c2"]["bias"],
        flat["MixerBlock_1/channel_mixing/Dense_1/bias"],
    )
    nnx.update(model, loaded)
    np.testing.assert_array_equal(model(_images()), 0.0)  # zero head: zero logits


def test_big_vision_params_prefix_and_input_untouched():
    flat, _ = _fabricated(7)
    state = nnx.state(_model(7), nnx.Param)
    loaded = pretrained.from_vit_jax({f"params/{k}": v for k, v in flat.items()}, state)
    np.testing.assert_array_equal(
        nnx.to_pure_dict(loaded)["norm"]["scale"], flat["pre_head_layer_norm/scale"]
    )
    untouched = jax.tree.leaves(nnx.to_pure_dict(state))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in untouched)  # a new State, not in place


@pytest.mark.parametrize(
    "change, match",
    [
        (
            lambda f: f.pop("MixerBlock_0/LayerNorm_1/scale"),
            "lacks 'MixerBlock_0/LayerNorm_1/scale'",
        ),
        (
            lambda f: f.update({"stem/kernel": np.zeros((8, 8, 3, 8))}),
            r"'stem/kernel' has shape \(8, 8, 3, 8\) but stem.kernel has \(4, 4, 3, 8\)",
        ),
    ],
)
def test_mismatch_is_one_line(change, match):
    flat, _ = _fabricated(7)
    change(flat)
    model = _model(7)
    with pytest.raises(pretrained.PretrainedError, match=match) as err:
        pretrained.from_vit_jax(flat, nnx.state(model, nnx.Param))
    assert "\n" not in str(err.value)


def test_keep_head_with_other_classes_fails():
    flat, _ = _fabricated(7)
    with pytest.raises(pretrained.PretrainedError, match="head='zero'"):
        pretrained.from_vit_jax(flat, nnx.state(_model(3), nnx.Param), head="keep")


def test_imixer_model_is_refused():
    flat, _ = _fabricated(7)
    model = _model(7, name="imixer_s16")
    with pytest.raises(pretrained.PretrainedError, match=r"build a mixer_\* model"):
        pretrained.from_vit_jax(flat, nnx.state(model, nnx.Param))


def test_entries_without_a_place_are_left_out_as_vit_jax_does():
    """vit_jax's load_pretrained tolerates checkpoint entries the model lacks (e.g. the
    ``pre_logits`` layer of a representation head) and replaces the head."""
    flat, params = _fabricated(7)
    extra = {"pre_logits/kernel": np.ones((8, 8), np.float32), "pre_logits/bias": np.ones(8)}
    model = _model(7)
    nnx.update(model, pretrained.from_vit_jax({**flat, **extra}, nnx.state(model, nnx.Param)))
    images = _images()
    np.testing.assert_allclose(
        model(images), _reference(7).apply({"params": params}, images), rtol=1e-5, atol=1e-5
    )


def test_tanh_gelu_reproduces_the_vit_jax_logits():
    """With ``approximate_gelu=True`` the model computes flax's default (tanh) GELU, as Google's
    Mixer: the logits equal vit_jax's to float32 round-off (same bound as the erf comparison)."""
    flat, params = _fabricated(7)
    model = nnx.eval_shape(
        lambda: create_model(
            "mixer_s16",
            rngs=nnx.Rngs(3),
            num_classes=7,
            channels_mlp_dim=TINY_MLP,
            drop_path_rate=0.0,
            approximate_gelu=True,
            **TINY,
        )
    )
    model.eval()
    nnx.update(model, pretrained.from_vit_jax(flat, nnx.state(model, nnx.Param)))
    images = _images()
    ref = _reference(7, gelu=nn.gelu).apply({"params": params}, images)
    ours = model(images)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    exact = _reference(7).apply({"params": params}, images)
    # The check tells the two GELUs apart: ours is much closer to the tanh reference.
    assert float(jnp.abs(ours - exact).max()) > 10 * float(jnp.abs(ours - ref).max())


def test_apply_init(tmp_path):
    flat, _ = _fabricated(7)
    path = tmp_path / "ckpt.npz"
    np.savez(path, **flat)
    model = _model(3)
    params, rest = nnx.state(model, nnx.Param, ...)
    init = formats.InitFrom(str(path))
    formats.check(init, model.config, params, rest)  # headers only
    loaded, _ = formats.apply_init(init, model.config, params, rest)
    loaded = nnx.to_pure_dict(loaded)
    np.testing.assert_array_equal(loaded["stem"]["bias"], flat["stem/bias"])
    assert not np.any(loaded["head"]["kernel"])
    with pytest.raises(pretrained.PretrainedError, match="^path: no file .*missing.npz"):
        formats.InitFrom(str(tmp_path / "missing.npz"))
    with pytest.raises(pretrained.PretrainedError, match="^head: must be one of auto, keep, zero"):
        formats.InitFrom(str(path), head="new")


@pytest.mark.parametrize(
    "name, patch, blocks, dim, count",
    [
        ("mixer_b16", 16, 12, 768, 59_880_472),
        ("mixer_b32", 32, 12, 768, 60_293_428),
        ("mixer_l16", 16, 24, 1024, 208_196_168),
    ],
)
def test_published_sizes_map_one_to_one(name, patch, blocks, dim, count):
    """Every array of the published Mixer-B/16, B/32 and L/16 (ImageNet, 1000 classes) has its
    place and shape in our variant, from abstract shapes only (nothing is allocated)."""
    reference = MlpMixer(
        patch_size=patch,
        num_classes=1000,
        num_blocks=blocks,
        hidden_dim=dim,
        tokens_mlp_dim=dim // 2,
        channels_mlp_dim=4 * dim,
    )
    images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    theirs = jax.eval_shape(reference.init, jax.random.key(0), images)["params"]
    theirs = {"/".join(k): v.shape for k, v in traverse_util.flatten_dict(theirs).items()}
    model = nnx.eval_shape(lambda: create_model(name, rngs=nnx.Rngs(0), num_classes=1000))
    ours = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    names = pretrained.vit_jax_names(blocks)
    assert set(names.values()) == set(theirs) and set(names) == set(ours)
    for path, key in names.items():
        assert ours[path].shape == theirs[key], (path, key)
    assert sum(int(np.prod(s)) for s in theirs.values()) == count


def test_tanh_gelu_has_no_energy():
    from imixer_jax.hopfield import lagrangians

    x = jnp.linspace(-4.0, 4.0, 9)
    tanh = lagrangians.GELU(approximate=True)
    np.testing.assert_array_equal(tanh.activation(x), nn.gelu(x))  # flax's default form
    # The exact GELU, as PyTorch's erf formula (jax.nn.gelu's erfc form differs by the
    # cancellation of 1 + erf at negative x: 8.5e-8 here, bound 2e-6 in test_hopfield_lagrangians).
    np.testing.assert_allclose(lagrangians.GELU().activation(x), exact_gelu(x), rtol=0, atol=2e-7)
    with pytest.raises(ValueError, match="tanh GELU .* has no closed-form Lagrangian"):
        tanh(x)
    with pytest.raises(ValueError, match="^approximate_gelu: .* set approximate_gelu=False"):
        create_model("imixer_s16", rngs=nnx.Rngs(0), tied=True, approximate_gelu=True)
