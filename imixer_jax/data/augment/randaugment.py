"""timm's RandAugment (``rand_augment_transform``): op choice, magnitudes and level maps."""

from __future__ import annotations

import dataclasses
import functools
import math
import re

import tensorflow as tf

from imixer_jax.data.augment.image_ops import (
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
from imixer_jax.data.augment.seeds import split_seed

LEVEL_DENOM = 10.0  # timm _LEVEL_DENOM: magnitudes are on a 0..10 scale
TRANSLATE_PCT = 0.45  # timm default translate_pct of TranslateXRel / TranslateYRel

RAND_TRANSFORMS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
RAND_INCREASING_TRANSFORMS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)


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


@dataclasses.dataclass(frozen=True)
class RandAugment:
    """timm's RandAugment: ``num_layers`` ops drawn uniformly with replacement from
    ``transforms``; each is applied with probability ``prob`` at a magnitude drawn from
    N(magnitude, magnitude_std) (uniform(0, magnitude) if the std is infinite) clipped to
    [0, magnitude_max]."""

    transforms: tuple[str, ...] = RAND_TRANSFORMS
    num_layers: int = 2
    magnitude: float = LEVEL_DENOM
    magnitude_std: float = 0.0
    magnitude_max: float = LEVEL_DENOM
    prob: float = 0.5

    @classmethod
    def from_string(cls, spec: str) -> RandAugment:
        """Parse a timm config string, e.g. ``'rand-m9-mstd0.5-inc1'``.

        Sections: ``m`` magnitude (int), ``n`` number of ops, ``mstd`` magnitude noise std (>100
        means uniform), ``mmax`` magnitude upper bound, ``inc`` 1 = 'increasing' op variants.
        timm's ``w`` (weighted op choice) is not supported. Unlike timm, ``inc0`` means
        non-increasing (timm tests ``bool('0')``, which is True).
        """
        sections = spec.split("-")
        if sections[0] != "rand":
            raise ValueError(f"RandAugment spec must start with 'rand-': {spec!r}")
        kwargs: dict = {}
        for section in sections[1:]:
            parts = re.split(r"(\d.*)", section)
            if len(parts) < 2:
                continue  # as timm: sections without a number are ignored
            key, value = parts[:2]
            if key == "m":
                kwargs["magnitude"] = float(int(value))
            elif key == "n":
                kwargs["num_layers"] = int(value)
            elif key == "mstd":
                std = float(value)
                kwargs["magnitude_std"] = math.inf if std > 100 else std
            elif key == "mmax":
                kwargs["magnitude_max"] = float(int(value))
            elif key == "inc":
                kwargs["transforms"] = RAND_INCREASING_TRANSFORMS if int(value) else RAND_TRANSFORMS
            else:
                raise ValueError(f"unsupported RandAugment section {section!r} in {spec!r}")
        return cls(**kwargs)

    def __call__(self, image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """Augment a uint8 ``[H, W, 3]`` image; returns uint8 ``[H, W, 3]``."""
        num_ops = len(self.transforms)
        for layer_seed in tf.unstack(split_seed(seed, self.num_layers)):
            s = split_seed(layer_seed, 4)
            op = tf.random.stateless_uniform([], s[0], 0, num_ops, dtype=tf.int32)
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
            branches = [
                functools.partial(apply_op, name, image, magnitude, negate)
                for name in self.transforms
            ]
            branches.append(functools.partial(tf.identity, image))  # op not applied
            image = tf.switch_case(tf.where(apply, op, num_ops), branches)
        return image
