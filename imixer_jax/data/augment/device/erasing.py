"""timm's RandomErasing (mode 'pixel', one box) in JAX, the twin of ``augment.random_erasing``."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array


def erasing_box(
    key: Array,
    height: int,
    width: int,
    prob: float,
    *,
    min_area: float = 0.02,
    max_area: float = 1.0 / 3.0,
    min_aspect: float = 0.3,
) -> tuple[Array, Array]:
    """The draws of ``random_erasing``: (erase bool ``[H, W]`` mask of the box, all False when
    not erasing; key of the noise). With probability ``prob`` one box of area fraction uniform
    in [min_area, max_area] and log-uniform aspect ratio (the first of 10 attempts that fits) is
    drawn; the sizes are computed in float32 (float64 in the TF twin: equal in distribution, a
    size may differ only when the two roundings straddle a half-integer)."""
    k_area, k_aspect, k_place, k_noise = jax.random.split(key, 4)
    area = float(height * width)
    target_area = area * jax.random.uniform(k_area, (10,), jnp.float32, min_area, max_area)
    log_aspect = jax.random.uniform(
        k_aspect, (10,), jnp.float32, math.log(min_aspect), math.log(1.0 / min_aspect)
    )
    aspect = jnp.exp(log_aspect)
    h = jnp.round(jnp.sqrt(target_area * aspect)).astype(jnp.int32)
    w = jnp.round(jnp.sqrt(target_area / aspect)).astype(jnp.int32)
    valid = (w < width) & (h < height)
    first = jnp.argmax(valid)
    h, w = h[first], w[first]
    u = jax.random.uniform(k_place, (3,), jnp.float32)
    top = jnp.floor(u[0] * (height - h + 1)).astype(jnp.int32)
    left = jnp.floor(u[1] * (width - w + 1)).astype(jnp.int32)
    erase = (u[2] <= prob) & jnp.any(valid)
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    box = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    return box & erase, k_noise


def random_erasing(image: Array, key: Array, prob: float) -> Array:
    """timm ``RandomErasing(prob, mode='pixel', count=1)`` on a normalised float ``[H, W, C]``
    image: with probability ``prob`` one box is replaced by per-pixel N(0, 1) noise."""
    box, k_noise = erasing_box(key, image.shape[0], image.shape[1], prob)
    noise = jax.random.normal(k_noise, image.shape, image.dtype)
    return jnp.where(box[..., None], noise, image)
