"""Registered Mixer / iMixer variants (docs/theory.md#architecture) and exact parameter counts.

Names ``mixer_{s,b,l}{16,32}`` (MLP-Mixer, token MLP) and ``imixer_{s,b,l}{16,32}`` (iMixer,
iMLP), 224 px:

| size | num_blocks | hidden_dim D | tokens_mlp_dim T = D/2 | channels_mlp_dim C = 4D |
|---|---|---|---|---|
| s | 8 | 512 | 256 | 2048 |
| b | 12 | 768 | 384 | 3072 |
| l | 24 | 1024 | 512 | 4096 |

iMixer defaults (``MixerConfig``'s) are the official training settings: hidden_ratio 2, n_iter 2,
n_power 8, sn_coeff 0.9, untied, unrolled adjoint, residual update.

Choice: ``drop_path_rate`` defaults to 0.1 for *every* variant, MLP-Mixer included. 0.1 is the
official iMixer training value (same rate in every block); using it for the mixer_* baselines too
keeps the Mixer/iMixer comparison under one recipe, as in the paper. Override with
``drop_path_rate=0.0`` for a stochastic-depth-free model. ``num_classes`` defaults to 1000.

The parallelized MLP-Mixer family (``ParaMixer``; Karakida, Ota & Taki 2024) under the official
names, 224 px, same sizes, T = D/2, C = 4D, no MLP biases, symmetric (S x D) layernorms:

| name | block | MLPs |
|---|---|---|
| ``vanillamixer_{s,b,l}{16,32}_224`` | serial | plain fc2(g(fc1 x)) |
| ``paramixer_{s,b,l}{16,32}_224`` | parallel | plain |
| ``symmixer_{s,b,l}{16,32}_224`` | parallel | tied W^T g(W x) |
| ``asymmixer_{s,b,l}{16,32}_224`` | parallel | W_1^T g(W_1 x) + W_2 g(W_1 x) |

``asymmixer_s16_224_lXX`` are the official ones (l01: penalty lambda = ``asym_penalty`` = 0.1,
l02: 1e-2, l035: 5e-4, ...); the size grid ``asymmixer_{s,b,l}{16,32}_224`` (lambda 0) is ours.

``{vanilla,para,sym}mixer_s16_224_ni{2,3,4}``: each block applied ``repeats`` times with the same
weights. ``PARAMIXER_NAMES`` lists them; ``model_class(name)`` / ``model_arch(name)`` say which
class a variant builds (``VARIANT_NAMES`` stays the Mixer/iMixer set).

``model_config(name, **overrides)`` is a variant's typed config (``configs.MixerConfig`` or
``configs.ParaMixerConfig``; every field not listed above keeps the config class's default);
``create_model(name, rngs=..., **overrides)`` builds it, ``build(config, rngs=...)`` builds any
config.
"""

from __future__ import annotations

import difflib
import itertools
import math

import jax
from flax import nnx

from imixer_jax.models.backbone import Backbone
from imixer_jax.models.configs import (
    EnergyTransformerConfig,
    MixerConfig,
    ModelConfig,
    ParaMixerConfig,
)
from imixer_jax.models.energy_transformer import EnergyTransformer
from imixer_jax.models.mixer import Mixer
from imixer_jax.models.paramixer import ParaMixer

_SIZES = {"s": (8, 512), "b": (12, 768), "l": (24, 1024)}
_PATCHES = (16, 32)
# The registry's own defaults; every other field is the config class's default.
_DEFAULTS = dict(num_classes=1000, img_size=224, drop_path_rate=0.1)


def _sizes(size: str, patch_size: int) -> dict:
    num_blocks, dim = _SIZES[size]
    return dict(
        _DEFAULTS,
        patch_size=patch_size,
        num_blocks=num_blocks,
        hidden_dim=dim,
        tokens_mlp_dim=dim // 2,
        channels_mlp_dim=4 * dim,
    )


_VARIANTS = {
    f"{prefix}_{size}{patch}": MixerConfig(**_sizes(size, patch), token_mixer=token_mixer)
    for (prefix, token_mixer), size, patch in itertools.product(
        (("mixer", "mlp"), ("imixer", "imlp")), _SIZES, _PATCHES
    )
}
VARIANT_NAMES: tuple[str, ...] = tuple(_VARIANTS)

_PARAMIXER_KINDS = {
    "vanillamixer": ("serial", "vanilla"),
    "paramixer": ("parallel", "vanilla"),
    "symmixer": ("parallel", "symmetric"),
    "asymmixer": ("parallel", "asymmetric"),
}
# Official asymmixer_s16_224 lambdas (name suffix -> asym_penalty).
_ASYM_PENALTIES = {
    "l00": 0.0,
    "l01": 0.1,
    "l02": 1e-2,
    "l03": 1e-3,
    "l035": 5e-4,
    "l04": 1e-4,
    "l05": 1e-5,
    "l06": 1e-6,
    "l10": 1.0,
}


def _paramixer_variant(kind: str, size: str, patch_size: int, **overrides) -> ParaMixerConfig:
    block, mlp = _PARAMIXER_KINDS[kind]
    return ParaMixerConfig(**_sizes(size, patch_size), block=block, mlp=mlp, **overrides)


_PARAMIXER_VARIANTS = {
    **{
        f"{kind}_{size}{patch}_224": _paramixer_variant(kind, size, patch)
        for kind, size, patch in itertools.product(_PARAMIXER_KINDS, _SIZES, _PATCHES)
    },
    **{
        f"{kind}_s16_224_ni{n}": _paramixer_variant(kind, "s", 16, repeats=n)
        for kind in ("vanillamixer", "paramixer", "symmixer")
        for n in (2, 3, 4)
    },
    **{
        f"asymmixer_s16_224_{suffix}": _paramixer_variant("asymmixer", "s", 16, asym_penalty=lam)
        for suffix, lam in _ASYM_PENALTIES.items()
    },
}
PARAMIXER_NAMES: tuple[str, ...] = tuple(_PARAMIXER_VARIANTS)

# The Energy Transformer (one block of n_iter = 12 steps of 0.1, K = 4 D memories, heads of Y =
# 64), at the sizes of ViT-S/16 and ViT-B/16.
_ENERGY_TRANSFORMER_VARIANTS = {
    f"energy_transformer_{size}16": EnergyTransformerConfig(
        **_DEFAULTS,
        patch_size=16,
        num_blocks=1,
        hidden_dim=dim,
        num_heads=dim // 64,
        head_dim=64,
        num_memories=4 * dim,
        n_iter=12,
    )
    for size, dim in (("s", 384), ("b", 768))
}
ENERGY_TRANSFORMER_NAMES: tuple[str, ...] = tuple(_ENERGY_TRANSFORMER_VARIANTS)
_ALL_VARIANTS = {**_VARIANTS, **_PARAMIXER_VARIANTS, **_ENERGY_TRANSFORMER_VARIANTS}
ARCHITECTURES: dict[str, type[Backbone]] = {
    c.config_class.arch: c for c in (Mixer, ParaMixer, EnergyTransformer)
}


def model_arch(name: str) -> str:
    """Key in ``ARCHITECTURES`` of the class that builds variant ``name``."""
    return model_config(name).arch


def model_class(name: str) -> type[Backbone]:
    """The class that builds variant ``name`` (``Mixer`` or ``ParaMixer``)."""
    return ARCHITECTURES[model_arch(name)]


def model_config(name: str, **overrides) -> ModelConfig:
    """The typed config of variant ``name`` with ``overrides`` (field values) applied.

    Raises:
      ValueError: an unknown variant, or an override that is not a field of its config (with the
        closest field name) or an invalid value (one line naming the field).
    """
    config = _ALL_VARIANTS.get(name)
    if config is None:
        close = difflib.get_close_matches(name, list(_ALL_VARIANTS), n=3)
        families = ", ".join(dict.fromkeys(n.split("_")[0] + "_*" for n in _ALL_VARIANTS))
        hint = f"did you mean {' or '.join(close)}?" if close else f"the variants are {families}"
        raise ValueError(
            f"unknown model {name!r}; {hint} "
            "(python -m imixer_jax.models --num-classes 10 lists them)"
        )
    return config.replace(**overrides)


def build(config: ModelConfig, *, rngs: nnx.Rngs) -> Backbone:
    """The model of ``config`` (its architecture's class) with parameters drawn from ``rngs``."""
    return ARCHITECTURES[config.arch](config, rngs=rngs)


def create_model(name: str, *, rngs: nnx.Rngs, **overrides) -> Backbone:
    """Build variant ``name`` (see ``model_config``) with parameters drawn from ``rngs``."""
    return build(model_config(name, **overrides), rngs=rngs)


def param_count(name: str, **overrides) -> int:
    """Exact number of parameters of variant ``name`` with ``overrides`` (see ``count_params``)."""
    return count_params(model_config(name, **overrides))


def count_params(config: ModelConfig) -> int:
    """Exact number of parameters (``nnx.Param`` entries; spectral-norm u, v excluded) of the model
    of ``config``, from abstract shapes only (``nnx.eval_shape``: nothing is allocated)."""
    model = nnx.eval_shape(lambda: build(config, rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params))
