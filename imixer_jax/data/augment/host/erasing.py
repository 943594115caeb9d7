"""timm's RandomErasing (mode 'pixel', one box) on a normalised float image."""

from __future__ import annotations

import math

import tensorflow as tf

from imixer_jax.data.augment.host.seeds import split_seed


def random_erasing(
    image: tf.Tensor,
    seed: tf.Tensor,
    prob: float,
    *,
    min_area: float = 0.02,
    max_area: float = 1.0 / 3.0,
    min_aspect: float = 0.3,
) -> tf.Tensor:
    """timm ``RandomErasing(prob, mode='pixel', count=1)`` on a normalised float ``[H, W, C]``
    image: with probability ``prob`` one box is replaced by per-pixel N(0, 1) noise."""
    seeds = split_seed(seed, 5)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    area = tf.cast(height * width, tf.float64)
    target_area = area * tf.random.stateless_uniform(
        [10], seeds[0], min_area, max_area, dtype=tf.float64
    )
    log_aspect = tf.random.stateless_uniform(
        [10], seeds[1], math.log(min_aspect), math.log(1.0 / min_aspect), dtype=tf.float64
    )
    aspect = tf.exp(log_aspect)
    h = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)
    w = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
    valid = (w < width) & (h < height)
    first = tf.argmax(tf.cast(valid, tf.int32), output_type=tf.int32)
    h, w = h[first], w[first]
    u = tf.random.stateless_uniform([3], seeds[2], dtype=tf.float64)
    top = tf.cast(tf.floor(u[0] * tf.cast(height - h + 1, tf.float64)), tf.int32)
    left = tf.cast(tf.floor(u[1] * tf.cast(width - w + 1, tf.float64)), tf.int32)
    erase = (u[2] <= prob) & tf.reduce_any(valid)

    def _erase():
        rows = tf.range(height)[:, None, None]
        cols = tf.range(width)[None, :, None]
        box = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
        noise = tf.random.stateless_normal(shape, seeds[3], dtype=image.dtype)
        return tf.where(box, noise, image)

    return tf.cond(erase, _erase, lambda: image)
