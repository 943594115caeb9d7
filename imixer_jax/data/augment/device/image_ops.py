"""The RandAugment image operations in JAX, on one uint8 ``[H, W, 3]`` image (vmap for a batch).

Each function equals its TensorFlow twin in ``imixer_jax.data.augment.host.image_ops`` (itself
Pillow's semantics): the pixel ops exactly, the affine warp within one grey level (both sample
bilinearly in float32; a value at exactly .5 may round either way). The pixel ops that map every
channel value independently (autocontrast, equalize, invert, posterize, solarize, solarize_add,
contrast, brightness) are written as per-channel lookup tables ``[3, 256]``, so that RandAugment
can pick one table per image and apply it with a single gather whichever op was drawn.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from imixer_jax.data.augment.policy import FILL

Array = jax.Array
# The 256 grey levels, input of every table (numpy: importing must not start the JAX backend,
# which jax.distributed.initialize must precede).
VALUES = np.arange(256, dtype=np.int32)


def to_uint8(x: Array) -> Array:
    """Round (half to even, as ``tf.round``) and clip a float image to uint8."""
    return jnp.round(jnp.clip(x, 0.0, 255.0)).astype(jnp.uint8)


def blend(degenerate: Array, image: Array, factor: Array) -> Array:
    """PIL ``Image.blend(degenerate, image, factor)``: ``d + factor (x - d)`` in float32,
    clipped and truncated to uint8. Any matching shapes (images or tables)."""
    d = degenerate.astype(jnp.float32)
    x = jnp.clip(d + factor * (image.astype(jnp.float32) - d), 0.0, 255.0)
    return x.astype(jnp.int32)


def grey(image: Array) -> Array:
    """PIL's RGB -> L conversion (ITU-R 601-2 luma, fixed point): int32 ``[H, W]``."""
    x = image.astype(jnp.int32)
    return (x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) >> 16


def histograms(image: Array) -> Array:
    """Per-channel 256-bin histograms of a uint8 ``[H, W, 3]`` image: int32 ``[3, 256]``."""
    x = image.reshape(-1, 3).astype(jnp.int32)
    return jnp.zeros((3, 256), jnp.int32).at[jnp.arange(3)[None, :], x].add(1)


def apply_luts(image: Array, luts: Array) -> Array:
    """Map channel c of a uint8 ``[H, W, 3]`` image through ``luts[c]`` (int ``[3, 256]``)."""
    x = image.astype(jnp.int32)
    return jnp.stack([luts[c][x[..., c]] for c in range(3)], axis=-1).astype(jnp.uint8)


@functools.cache
def _autocontrast_below() -> np.ndarray:
    """Sorted int32 keys ``(lo * 256 + hi) * 256 + v`` of the table entries where PIL's float64
    ``int(v * s - lo * s)`` (s = 255 / (hi - lo)) is one below the exact ``(v - lo) 255 // (hi -
    lo)``. That happens only where the exact quotient is an integer (12,094 of the 2.8 million
    entries); float32 arithmetic would differ elsewhere too, and JAX has no float64 by default,
    hence the list (48 KiB, built once with numpy)."""
    hi = np.arange(256, dtype=np.float64)[:, None]
    v = np.arange(256, dtype=np.float64)[None, :]
    keys = []
    for lo in range(255):
        span = np.maximum(hi - lo, 1.0)
        scale = 255.0 / span
        below = np.floor(v * scale - lo * scale) < np.floor((v - lo) * 255.0 / span)
        below &= (hi > lo) & (v >= lo) & (v <= hi)
        his, vs = np.nonzero(below)
        keys.append((lo * 256 + his) * 256 + vs)
    return np.concatenate(keys).astype(np.int32)


def autocontrast_lut(hist: Array) -> Array:
    """PIL ``ImageOps.autocontrast`` (cutoff 0): each channel's [lo, hi] stretched to [0, 255]
    (identity for a flat channel). ``hist`` int ``[3, 256]``; returns int32 ``[3, 256]``."""
    present = hist > 0
    lo = jnp.argmax(present, axis=1).astype(jnp.int32)[:, None]
    hi = 255 - jnp.argmax(present[:, ::-1], axis=1).astype(jnp.int32)[:, None]
    exact = jnp.floor_divide((VALUES[None, :] - lo) * 255, jnp.maximum(hi - lo, 1))
    below_keys = jnp.asarray(_autocontrast_below())
    keys = (lo * 256 + hi) * 256 + VALUES[None, :]
    found = below_keys[jnp.clip(jnp.searchsorted(below_keys, keys), 0, below_keys.size - 1)]
    lut = jnp.clip(exact - (found == keys).astype(jnp.int32), 0, 255)
    return jnp.where(hi > lo, lut, VALUES[None, :])


def equalize_lut(hist: Array) -> Array:
    """PIL ``ImageOps.equalize``: per-channel histogram equalisation with PIL's integer table.
    ``hist`` int ``[3, 256]``; returns int32 ``[3, 256]``."""
    total = hist.sum(axis=1)
    top = 255 - jnp.argmax((hist > 0)[:, ::-1], axis=1)
    last = jnp.take_along_axis(hist, top[:, None], axis=1)[:, 0]  # count of the largest value
    step = (total - last) // 255
    safe_step = jnp.maximum(step, 1)[:, None]
    lut = (safe_step // 2 + jnp.cumsum(hist, axis=1) - hist) // safe_step
    keep = (jnp.count_nonzero(hist, axis=1) <= 1) | (step == 0)
    return jnp.where(keep[:, None], VALUES[None, :], jnp.minimum(lut, 255))


def invert_lut() -> Array:
    """PIL ``ImageOps.invert``: int32 ``[3, 256]``."""
    return jnp.broadcast_to(255 - VALUES, (3, 256))


def posterize_lut(bits: Array) -> Array:
    """PIL ``ImageOps.posterize``: keep the ``bits`` (0..8) most significant bits."""
    shift = 8 - bits
    return jnp.broadcast_to((VALUES >> shift) << shift, (3, 256))


def solarize_lut(threshold: Array) -> Array:
    """PIL ``ImageOps.solarize``: invert every value >= threshold."""
    return jnp.broadcast_to(jnp.where(threshold > VALUES, VALUES, 255 - VALUES), (3, 256))


def solarize_add_lut(add: Array, threshold: int = 128) -> Array:
    """timm ``solarize_add``: add ``add`` (saturating) to every value below ``threshold``."""
    added = jnp.where(threshold > VALUES, jnp.minimum(VALUES + add, 255), VALUES)
    return jnp.broadcast_to(added, (3, 256))


def contrast_lut(image: Array, factor: Array) -> Array:
    """PIL ``ImageEnhance.Contrast``: blend with the rounded mean grey level (an exact integer
    formula for PIL's ``int(mean + 0.5)``). ``image`` uint8 ``[H, W, 3]``."""
    count = image.shape[0] * image.shape[1]
    mean = (2 * grey(image).sum() + count) // (2 * count)
    return jnp.broadcast_to(blend(mean, VALUES, factor), (3, 256))


def brightness_lut(factor: Array) -> Array:
    """PIL ``ImageEnhance.Brightness``: blend with black."""
    return jnp.broadcast_to(blend(jnp.zeros((), jnp.int32), VALUES, factor), (3, 256))


def smooth(image: Array) -> Array:
    """PIL's SMOOTH filter (3x3 kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13) on the interior,
    border pixels unchanged: uint8 ``[H, W, 3]``, the degenerate image of ``Sharpness``. The
    weighted sum over 13 is never within 1/26 of a half-integer, so the summation order cannot
    change the rounding."""
    x = image.astype(jnp.float32)
    h, w = image.shape[:2]
    weights = {(dy, dx): 1.0 / 13.0 for dy in range(3) for dx in range(3)}
    weights[1, 1] = 5.0 / 13.0
    total = sum(wt * x[dy : dy + h - 2, dx : dx + w - 2] for (dy, dx), wt in weights.items())
    return image.at[1:-1, 1:-1].set(to_uint8(total))


def color_degenerate(image: Array) -> Array:
    """The grey image repeated to 3 channels, the degenerate image of ``Color``."""
    return jnp.repeat(grey(image)[..., None], 3, axis=-1)


def affine(image: Array, matrix: Array, fill: int = FILL) -> Array:
    """PIL ``Image.transform(size, AFFINE, matrix, BILINEAR, fillcolor=fill)`` as the TF twin
    computes it (``ImageProjectiveTransformV3``, bilinear, edges clamped).

    ``matrix`` float32 ``[6]`` = (a, b, c, d, e, f) maps an output point (x, y) to the input point
    (a x + b y + c, d x + e y + f) in PIL's continuous coordinates (pixel i centred at i + 0.5);
    an output pixel whose input point falls outside the image gets ``fill``. uint8 ``[H, W, 3]``.
    """
    a, b, c, d, e, f = (matrix[i] for i in range(6))
    h, w = image.shape[:2]
    oy = jnp.arange(h, dtype=jnp.float32)[:, None]
    ox = jnp.arange(w, dtype=jnp.float32)[None, :]
    x = jnp.clip(a * ox + b * oy + (c + 0.5 * (a + b) - 0.5), 0.0, w - 1.0)
    y = jnp.clip(d * ox + e * oy + (f + 0.5 * (d + e) - 0.5), 0.0, h - 1.0)
    x0, y0 = jnp.floor(x), jnp.floor(y)
    x1, y1 = x0 + 1.0, y0 + 1.0
    flat = image.reshape(h * w, 3).astype(jnp.float32)

    def read(yi: Array, xi: Array) -> Array:  # 0 outside, as TF's fill_value
        inside = (xi < w) & (yi < h)
        index = jnp.minimum(yi, h - 1).astype(jnp.int32) * w + jnp.minimum(xi, w - 1).astype(
            jnp.int32
        )
        return jnp.where(inside[..., None], flat[index], 0.0)

    wx0, wx1 = (x1 - x)[..., None], (x - x0)[..., None]
    top = wx0 * read(y0, x0) + wx1 * read(y0, x1)
    bottom = wx0 * read(y1, x0) + wx1 * read(y1, x1)
    value = (y1 - y)[..., None] * top + (y - y0)[..., None] * bottom
    xc, yc = ox + 0.5, oy + 0.5
    x_in, y_in = a * xc + b * yc + c, d * xc + e * yc + f
    inside = (x_in >= 0) & (x_in < w) & (y_in >= 0) & (y_in < h)
    return to_uint8(jnp.where(inside[..., None], value, float(fill)))


def rotate_matrix(degrees: Array, height: int, width: int) -> Array:
    """PIL ``Image.rotate(degrees)`` about the centre (counter-clockwise): the affine
    ``matrix`` float32 ``[6]``."""
    cx, cy = width / 2.0, height / 2.0
    angle = -degrees * (np.pi / 180.0)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    return jnp.stack([cos, sin, -cos * cx - sin * cy + cx, -sin, cos, sin * cx - cos * cy + cy])
