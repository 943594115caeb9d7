"""Registered Mixer / iMixer variants (SPEC section 4) and exact parameter counts.

Names ``mixer_{s,b,l}{16,32}`` (MLP-Mixer, token MLP) and ``imixer_{s,b,l}{16,32}`` (iMixer,
iMLP), 224 px:

| size | num_blocks | hidden_dim D | tokens_mlp_dim T = D/2 | channels_mlp_dim C = 4D |
|---|---|---|---|---|
| s | 8 | 512 | 256 | 2048 |
| b | 12 | 768 | 384 | 3072 |
| l | 24 | 1024 | 512 | 4096 |

iMixer defaults are the official training settings: hidden_ratio 2, n_iter 2, n_power 8,
sn_coeff 0.9, untied, unrolled adjoint, residual update.

Choice: ``drop_path_rate`` defaults to 0.1 for *every* variant, MLP-Mixer included. 0.1 is the
official iMixer training value (same rate in every block); using it for the mixer_* baselines too
keeps the Mixer/iMixer comparison under one recipe, as in the paper. Override with
``drop_path_rate=0.0`` for a stochastic-depth-free model. ``num_classes`` defaults to 1000.
"""

from __future__ import annotations

import itertools
import math

import jax
from flax import nnx

from imixer_jax.models.mixer import Mixer

_SIZES = {"s": (8, 512), "b": (12, 768), "l": (24, 1024)}
_PATCHES = (16, 32)

_DEFAULTS = dict(
    num_classes=1000,
    img_size=224,
    hidden_ratio=2.0,
    n_iter=2,
    n_power=8,
    sn_coeff=0.9,
    spectral_norm=True,
    tied=False,
    adjoint="unrolled",
    tol=0.0,
    activation="gelu",
    update="residual",
    step_size=1.0,
    drop_path_rate=0.1,
    scan_blocks=False,
    remat="none",
    dtype=None,
)


def _variant(token_mixer: str, size: str, patch_size: int) -> dict:
    num_blocks, dim = _SIZES[size]
    return dict(
        _DEFAULTS,
        patch_size=patch_size,
        num_blocks=num_blocks,
        hidden_dim=dim,
        tokens_mlp_dim=dim // 2,
        channels_mlp_dim=4 * dim,
        token_mixer=token_mixer,
    )


_VARIANTS = {
    f"{prefix}_{size}{patch}": _variant(token_mixer, size, patch)
    for (prefix, token_mixer), size, patch in itertools.product(
        (("mixer", "mlp"), ("imixer", "imlp")), _SIZES, _PATCHES
    )
}
VARIANT_NAMES: tuple[str, ...] = tuple(_VARIANTS)


def model_kwargs(name: str, **overrides) -> dict:
    """Complete ``Mixer`` constructor kwargs (all but ``rngs``) of variant ``name``, overridden.

    Raises ValueError for an unknown variant or an override that is not a Mixer argument.
    """
    if name not in _VARIANTS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(VARIANT_NAMES)}")
    kwargs = dict(_VARIANTS[name])
    for key in overrides:
        if key not in kwargs:
            raise ValueError(f"unknown model argument {key!r} for {name}")
    kwargs.update(overrides)
    return kwargs


def create_model(name: str, *, rngs: nnx.Rngs, **overrides) -> Mixer:
    """Build variant ``name`` (see ``model_kwargs``) with parameters drawn from ``rngs``."""
    return Mixer(**model_kwargs(name, **overrides), rngs=rngs)


def param_count(name: str, **overrides) -> int:
    """Exact number of parameters (``nnx.Param`` entries; spectral-norm u, v excluded) of a variant,
    from abstract shapes only (``nnx.eval_shape``: nothing is allocated)."""
    model = nnx.eval_shape(lambda: create_model(name, rngs=nnx.Rngs(0), **overrides))
    params = nnx.state(model, nnx.Param)
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params))
