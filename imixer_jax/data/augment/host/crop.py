"""timm's RandomResizedCrop box and PIL-like resizing, on uint8 ``[h, w, c]`` tensors."""

from __future__ import annotations

import math

import tensorflow as tf

from imixer_jax.data.augment.host.image_ops import to_uint8
from imixer_jax.data.augment.host.seeds import split_seed


def sample_crop_box(
    seed: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
    *,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """timm's RandomResizedCrop box for an image of ``height x width``.

    Returns int32 scalars ``(top, left, crop_height, crop_width)``. All 10 attempts are drawn at
    once; the first valid one is used (same distribution as timm's loop).
    """
    seeds = split_seed(seed, 3)
    h_img = tf.cast(height, tf.float64)
    w_img = tf.cast(width, tf.float64)
    target_area = (
        h_img
        * w_img
        * tf.random.stateless_uniform([10], seeds[0], scale[0], scale[1], dtype=tf.float64)
    )
    log_ratio = tf.random.stateless_uniform(
        [10], seeds[1], math.log(ratio[0]), math.log(ratio[1]), dtype=tf.float64
    )
    aspect = tf.exp(log_ratio)
    w = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)
    h = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
    valid = (w <= width) & (h <= height) & (w >= 1) & (h >= 1)
    first = tf.argmax(tf.cast(valid, tf.int32), output_type=tf.int32)
    found = tf.reduce_any(valid)

    # timm's fallback: central crop with the aspect ratio clamped into `ratio`.
    in_ratio = w_img / h_img
    fallback_w = tf.where(
        in_ratio > ratio[1], tf.cast(tf.round(h_img * ratio[1]), tf.int32), tf.cast(width, tf.int32)
    )
    fallback_h = tf.where(
        in_ratio < ratio[0],
        tf.cast(tf.round(w_img / ratio[0]), tf.int32),
        tf.cast(height, tf.int32),
    )
    crop_h = tf.where(found, h[first], fallback_h)
    crop_w = tf.where(found, w[first], fallback_w)
    u = tf.random.stateless_uniform([2], seeds[2], dtype=tf.float64)
    random_top = tf.cast(tf.floor(u[0] * tf.cast(height - crop_h + 1, tf.float64)), tf.int32)
    random_left = tf.cast(tf.floor(u[1] * tf.cast(width - crop_w + 1, tf.float64)), tf.int32)
    top = tf.where(found, random_top, (height - crop_h) // 2)
    left = tf.where(found, random_left, (width - crop_w) // 2)
    return top, left, crop_h, crop_w


def resize(image: tf.Tensor, size: tuple[int, int] | tf.Tensor, method: str) -> tf.Tensor:
    """Resize a uint8 ``[h, w, c]`` image to ``size`` (``[H, W, c]`` uint8) like PIL.

    ``method`` is 'bicubic' or 'bilinear'; antialiased (the kernel widens when shrinking, as PIL
    does), result rounded and clipped to 0..255.
    """
    return to_uint8(tf.image.resize(image, size, method=method, antialias=True))


def sample_bilinear(interpolation: str, seed: tf.Tensor) -> tf.Tensor:
    """Whether ``random_interpolation_resize(..., interpolation, seed)`` resamples bilinearly
    (bool scalar): always for 'bilinear', never for 'bicubic', with probability 1/2 for
    'random' (timm's train default)."""
    if interpolation != "random":
        return tf.constant(interpolation == "bilinear")
    return tf.random.stateless_uniform([], seed) >= 0.5


def random_interpolation_resize(
    image: tf.Tensor, size: tuple[int, int], interpolation: str, seed: tf.Tensor
) -> tf.Tensor:
    """``resize`` with ``interpolation`` in {'bicubic', 'bilinear', 'random'}; 'random' picks
    bilinear or bicubic with probability 1/2 each (``sample_bilinear``)."""
    if interpolation != "random":
        return resize(image, size, interpolation)
    return tf.cond(
        sample_bilinear(interpolation, seed),
        lambda: resize(image, size, "bilinear"),
        lambda: resize(image, size, "bicubic"),
    )
