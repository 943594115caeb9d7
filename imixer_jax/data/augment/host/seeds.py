"""Stateless seeds: an int ``[2]`` tensor, as ``tf.random.stateless_*`` takes."""

from __future__ import annotations

import tensorflow as tf


def split_seed(seed: tf.Tensor, num: int) -> tf.Tensor:
    """``num`` independent stateless seeds ``[num, 2]`` derived from ``seed`` ``[2]``."""
    return tf.random.experimental.stateless_split(seed, num)
