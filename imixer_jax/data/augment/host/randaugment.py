"""timm's RandAugment (``rand_augment_transform``): op choice, magnitudes and level maps."""

from __future__ import annotations

import functools
import math

import tensorflow as tf

from imixer_jax.data.augment.host.image_ops import (
    auto_contrast,
    brightness,
    color,
    contrast,
    equalize,
    invert,
    posterize,
    rotate,
    sharpness,
    shear_x,
    shear_y,
    solarize,
    solarize_add,
    translate_x_rel,
    translate_y_rel,
)
from imixer_jax.data.augment.host.seeds import split_seed
from imixer_jax.data.augment.policy import LEVEL_DENOM, TRANSLATE_PCT, RandAugmentPolicy


def _signed(value: tf.Tensor, negate: tf.Tensor) -> tf.Tensor:
    return tf.where(negate, -value, value)


def _enhance_factor(level: tf.Tensor, negate: tf.Tensor, increasing: bool) -> tf.Tensor:
    if increasing:  # timm _enhance_increasing_level_to_arg: 1 +- 0.9 level, at least 0.1
        return tf.maximum(0.1, 1.0 + _signed(level * 0.9, negate))
    return level * 1.8 + 0.1  # timm _enhance_level_to_arg


def _floor_int(x: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.floor(x), tf.int32)


def apply_op(name: str, image: tf.Tensor, magnitude: tf.Tensor, negate: tf.Tensor) -> tf.Tensor:
    """One timm RandAugment op ``name`` at ``magnitude`` (0..10 scale, already clipped) with the
    random sign ``negate`` (used by the signed ops only), on a uint8 ``[H, W, 3]`` image."""
    level = magnitude / LEVEL_DENOM
    base = name.removesuffix("Increasing")
    increasing = name.endswith("Increasing")
    if name == "AutoContrast":
        return auto_contrast(image)
    if name == "Equalize":
        return equalize(image)
    if name == "Invert":
        return invert(image)
    if name == "Rotate":
        return rotate(image, _signed(level * 30.0, negate))
    if base == "Posterize":
        bits = _floor_int(level * 4.0)
        return posterize(image, 4 - bits if increasing else bits)
    if base == "Solarize":
        threshold = _floor_int(level * 256.0)
        return solarize(image, 256 - threshold if increasing else threshold)
    if name == "SolarizeAdd":
        return solarize_add(image, _floor_int(level * 110.0))
    if base in ("Color", "Contrast", "Brightness", "Sharpness"):
        enhance = {"Color": color, "Contrast": contrast, "Brightness": brightness}.get(
            base, sharpness
        )
        return enhance(image, _enhance_factor(level, negate, increasing))
    if name == "ShearX":
        return shear_x(image, _signed(level * 0.3, negate))
    if name == "ShearY":
        return shear_y(image, _signed(level * 0.3, negate))
    if name == "TranslateXRel":
        return translate_x_rel(image, _signed(level * TRANSLATE_PCT, negate))
    if name == "TranslateYRel":
        return translate_y_rel(image, _signed(level * TRANSLATE_PCT, negate))
    raise ValueError(f"unknown RandAugment op {name!r}")


class RandAugment(RandAugmentPolicy):
    """The RandAugment policy (``RandAugmentPolicy``, e.g. ``RandAugment.from_string(
    'rand-m9-mstd0.5-inc1')``) applied in TensorFlow with stateless seeds."""

    def sample_layer(
        self, layer_seed: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        """One layer's draws from a seed ``[2]``: (op index int32 in [0, len(transforms)),
        apply bool, magnitude float32 clipped to [0, magnitude_max], negate bool)."""
        s = split_seed(layer_seed, 4)
        op = tf.random.stateless_uniform([], s[0], 0, len(self.transforms), dtype=tf.int32)
        apply = tf.random.stateless_uniform([], s[1]) <= self.prob
        if math.isinf(self.magnitude_std):
            magnitude = tf.random.stateless_uniform([], s[2], 0.0, self.magnitude)
        elif self.magnitude_std > 0:
            noise = tf.random.stateless_normal([], s[2])
            magnitude = self.magnitude + self.magnitude_std * noise
        else:
            magnitude = tf.constant(self.magnitude, tf.float32)
        magnitude = tf.clip_by_value(magnitude, 0.0, self.magnitude_max)
        negate = tf.random.stateless_uniform([], s[3]) > 0.5
        return op, apply, magnitude, negate

    def __call__(self, image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """Augment a uint8 ``[H, W, 3]`` image; returns uint8 ``[H, W, 3]``."""
        num_ops = len(self.transforms)
        for layer_seed in tf.unstack(split_seed(seed, self.num_layers)):
            op, apply, magnitude, negate = self.sample_layer(layer_seed)
            branches = [
                functools.partial(apply_op, name, image, magnitude, negate)
                for name in self.transforms
            ]
            branches.append(functools.partial(tf.identity, image))  # op not applied
            image = tf.switch_case(tf.where(apply, op, num_ops), branches)
        return image
