"""Image operations on uint8 ``[H, W, 3]`` tensors with Pillow's semantics (the RandAugment ops).

Each op equals its PIL counterpart (``Image.blend``, ``ImageOps.*``, ``ImageEnhance.*``,
``Image.transform``) exactly, except the geometric ops: they sample bilinearly
(``ImageProjectiveTransformV3`` has no bicubic mode) and match Pillow's bilinear transform within
one grey level.
"""

from __future__ import annotations

import math

import tensorflow as tf

from imixer_jax.data.augment.policy import FILL


def to_uint8(x: tf.Tensor) -> tf.Tensor:
    """Round and clip a float image to uint8 (PIL's conversion of resampled pixels)."""
    return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 255.0)), tf.uint8)


def _truncate_uint8(x: tf.Tensor) -> tf.Tensor:
    """Clip and truncate a float image to uint8 (PIL's Image.blend)."""
    return tf.cast(tf.clip_by_value(x, 0.0, 255.0), tf.uint8)


def _grey(image: tf.Tensor) -> tf.Tensor:
    """PIL's RGB -> L conversion (ITU-R 601-2 luma, fixed point): int32 ``[H, W, 1]``."""
    x = tf.cast(image, tf.int32)
    luma = x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000
    return tf.bitwise.right_shift(luma, 16)[..., None]


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL ``Image.blend(degenerate, image, factor)`` (the ImageEnhance operation)."""
    d = tf.cast(degenerate, tf.float32)
    return _truncate_uint8(d + factor * (tf.cast(image, tf.float32) - d))


def _channel_histograms(image: tf.Tensor) -> tf.Tensor:
    """Per-channel 256-bin histograms, int32 ``[3, 256]``."""
    x = tf.transpose(tf.reshape(tf.cast(image, tf.int32), [-1, 3]))
    offsets = tf.constant([[0], [256], [512]], tf.int32)
    counts = tf.math.bincount(tf.reshape(x + offsets, [-1]), minlength=768, maxlength=768)
    return tf.reshape(counts, [3, 256])


def _apply_luts(image: tf.Tensor, luts: tf.Tensor) -> tf.Tensor:
    """Map every channel c of a uint8 image through ``luts[c]`` (``[3, 256]``, 0..255)."""
    shape = tf.shape(image)
    x = tf.transpose(tf.reshape(tf.cast(image, tf.int32), [-1, 3]))
    mapped = tf.gather(luts, x, batch_dims=1)
    return tf.reshape(tf.cast(tf.transpose(mapped), tf.uint8), shape)


def auto_contrast(image: tf.Tensor) -> tf.Tensor:
    """PIL ``ImageOps.autocontrast`` (cutoff 0): stretch each channel's [min, max] to [0, 255]."""
    x = tf.cast(image, tf.float64)
    lo = tf.reduce_min(x, axis=[0, 1])
    hi = tf.reduce_max(x, axis=[0, 1])
    scale = 255.0 / tf.maximum(hi - lo, 1.0)
    stretched = tf.clip_by_value(tf.floor(x * scale - lo * scale), 0.0, 255.0)
    return tf.cast(tf.where(hi > lo, stretched, x), tf.uint8)


def equalize(image: tf.Tensor) -> tf.Tensor:
    """PIL ``ImageOps.equalize``: per-channel histogram equalisation with PIL's integer LUT."""
    hist = _channel_histograms(image)
    total = tf.reduce_sum(hist, axis=1)
    top_value = tf.cast(tf.reduce_max(tf.reshape(image, [-1, 3]), axis=0), tf.int32)
    last = tf.gather(hist, top_value, batch_dims=1)  # count of the largest value present
    step = (total - last) // 255
    identity_lut = tf.range(256, dtype=tf.int32)[None, :]
    safe_step = tf.maximum(step, 1)[:, None]
    lut = (safe_step // 2 + tf.cumsum(hist, axis=1, exclusive=True)) // safe_step
    keep = (tf.math.count_nonzero(hist, axis=1) <= 1) | (step == 0)
    lut = tf.where(keep[:, None], identity_lut, tf.minimum(lut, 255))
    return _apply_luts(image, lut)


def invert(image: tf.Tensor) -> tf.Tensor:
    """PIL ``ImageOps.invert``."""
    return 255 - image


def posterize(image: tf.Tensor, bits: tf.Tensor) -> tf.Tensor:
    """PIL ``ImageOps.posterize``: keep the ``bits`` (0..8) most significant bits."""
    shift = 8 - tf.cast(bits, tf.int32)
    x = tf.cast(image, tf.int32)
    return tf.cast(tf.bitwise.left_shift(tf.bitwise.right_shift(x, shift), shift), tf.uint8)


def solarize(image: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
    """PIL ``ImageOps.solarize``: invert every value >= threshold."""
    x = tf.cast(image, tf.int32)
    return tf.cast(tf.where(x < threshold, x, 255 - x), tf.uint8)


def solarize_add(image: tf.Tensor, add: tf.Tensor, threshold: int = 128) -> tf.Tensor:
    """timm ``solarize_add``: add ``add`` (saturating) to every value below ``threshold``."""
    x = tf.cast(image, tf.int32)
    return tf.cast(tf.where(x < threshold, tf.minimum(x + add, 255), x), tf.uint8)


def color(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL ``ImageEnhance.Color`` (saturation): blend with the grey version."""
    return _blend(tf.cast(tf.tile(_grey(image), [1, 1, 3]), tf.uint8), image, factor)


def contrast(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL ``ImageEnhance.Contrast``: blend with a flat image at the rounded mean grey level."""
    mean = tf.floor(tf.reduce_mean(tf.cast(_grey(image), tf.float64)) + 0.5)
    return _blend(tf.fill(tf.shape(image), tf.cast(mean, tf.uint8)), image, factor)


def brightness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL ``ImageEnhance.Brightness``: blend with black."""
    return _blend(tf.zeros_like(image), image, factor)


def sharpness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL ``ImageEnhance.Sharpness``: blend with PIL's SMOOTH filter (3x3 kernel
    [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13, border pixels left unfiltered)."""
    kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    x = tf.cast(image, tf.float32)
    smooth = tf.nn.depthwise_conv2d(x[None], kernel, [1, 1, 1, 1], "VALID")[0]
    smooth = to_uint8(smooth)
    interior = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
    shape = tf.shape(image)
    rows = tf.range(shape[0])[:, None, None]
    cols = tf.range(shape[1])[None, :, None]
    is_interior = (rows > 0) & (rows < shape[0] - 1) & (cols > 0) & (cols < shape[1] - 1)
    return _blend(tf.where(is_interior, interior, image), image, factor)


def affine(image: tf.Tensor, matrix: list[tf.Tensor], fill: int = FILL) -> tf.Tensor:
    """PIL ``Image.transform(size, AFFINE, matrix, BILINEAR, fillcolor=fill)``.

    ``matrix = (a, b, c, d, e, f)`` maps an output point (x, y) to the input point
    (a x + b y + c, d x + e y + f) in PIL's continuous coordinates (pixel i spans [i, i + 1] and
    is sampled at its centre i + 0.5). As in PIL, an output pixel whose input point falls outside
    the image gets ``fill``; inside, bilinear interpolation clamps at the edges. TF's op works on
    pixel indices (pixel i at i), hence the half-pixel conjugation. The raw op is used because no
    tf.image function exposes a general affine warp (Keras' wrapper follows the Keras backend,
    which may be JAX in this project).
    """
    a, b, c, d, e, f = (tf.cast(m, tf.float32) for m in matrix)
    shape = tf.shape(image)
    zero = tf.zeros([], tf.float32)
    transform = tf.stack(
        [a, b, c + 0.5 * (a + b) - 0.5, d, e, f + 0.5 * (d + e) - 0.5, zero, zero]
    )[None]
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(image, tf.float32)[None],
        transforms=transform,
        output_shape=shape[:2],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    )[0]
    y = tf.cast(tf.range(shape[0]), tf.float32)[:, None] + 0.5
    x = tf.cast(tf.range(shape[1]), tf.float32)[None, :] + 0.5
    x_in = a * x + b * y + c
    y_in = d * x + e * y + f
    height = tf.cast(shape[0], tf.float32)
    width = tf.cast(shape[1], tf.float32)
    inside = (x_in >= 0) & (x_in < width) & (y_in >= 0) & (y_in < height)
    return to_uint8(tf.where(inside[..., None], warped, float(fill)))


def rotate(image: tf.Tensor, degrees: tf.Tensor, fill: int = FILL) -> tf.Tensor:
    """PIL ``Image.rotate(degrees)`` about the image centre (counter-clockwise), same size."""
    shape = tf.cast(tf.shape(image), tf.float32)
    cx, cy = shape[1] / 2.0, shape[0] / 2.0
    angle = -degrees * (math.pi / 180.0)
    cos, sin = tf.cos(angle), tf.sin(angle)
    matrix = [cos, sin, -cos * cx - sin * cy + cx, -sin, cos, sin * cx - cos * cy + cy]
    return affine(image, matrix, fill)


def shear_x(image: tf.Tensor, factor: tf.Tensor, fill: int = FILL) -> tf.Tensor:
    """timm ``shear_x``: AFFINE (1, factor, 0, 0, 1, 0)."""
    return affine(image, [1.0, factor, 0.0, 0.0, 1.0, 0.0], fill)


def shear_y(image: tf.Tensor, factor: tf.Tensor, fill: int = FILL) -> tf.Tensor:
    """timm ``shear_y``: AFFINE (1, 0, 0, factor, 1, 0)."""
    return affine(image, [1.0, 0.0, 0.0, factor, 1.0, 0.0], fill)


def translate_x_rel(image: tf.Tensor, pct: tf.Tensor, fill: int = FILL) -> tf.Tensor:
    """timm ``translate_x_rel``: shift by ``pct * width`` pixels."""
    pixels = pct * tf.cast(tf.shape(image)[1], tf.float32)
    return affine(image, [1.0, 0.0, pixels, 0.0, 1.0, 0.0], fill)


def translate_y_rel(image: tf.Tensor, pct: tf.Tensor, fill: int = FILL) -> tf.Tensor:
    """timm ``translate_y_rel``: shift by ``pct * height`` pixels."""
    pixels = pct * tf.cast(tf.shape(image)[0], tf.float32)
    return affine(image, [1.0, 0.0, 0.0, 0.0, 1.0, pixels], fill)
