"""Per-example transforms of the TFDS pipeline: encoded record -> augmented, normalised image.

``train_transform`` composes the augmentation of ``imixer_jax.data.augment.host`` in the official
order (RandomResizedCrop decoding only the crop, resize, flip, RandAugment on uint8, normalise,
random erasing on the normalised image); ``eval_transform`` is timm's resize + centre crop. Both
return float32 ``[S, S, 3]`` with mean = std = 0.5 (pixels in [-1, 1]); grey images become RGB.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import tensorflow as tf
import tensorflow_datasets as tfds

from imixer_jax.data.augment import host as augment_lib

EVAL_INTERPOLATION = "bicubic"  # official eval resize


def _to_rgb(image: tf.Tensor) -> tf.Tensor:
    return tf.image.grayscale_to_rgb(image) if image.shape[-1] == 1 else image


def _normalize(image: tf.Tensor) -> tf.Tensor:
    """uint8 -> float32 with mean = std = 0.5: pixels in [-1, 1]."""
    return tf.cast(image, tf.float32) / 127.5 - 1.0


def _resize_centre_crop(image: tf.Tensor, size: int, crop_ratio: float, resize_fn) -> tf.Tensor:
    """timm eval transform: shorter side -> floor(size / crop_ratio) (longer side scaled and
    truncated, as torchvision Resize), then the centre ``size x size`` crop (offsets rounded)."""
    scale_size = math.floor(size / crop_ratio)
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    short = tf.minimum(h, w)
    long_side = tf.cast(
        tf.cast(scale_size, tf.int64)
        * tf.cast(tf.maximum(h, w), tf.int64)
        // tf.cast(short, tf.int64),
        tf.int32,
    )
    new_h = tf.where(h <= w, scale_size, long_side)
    new_w = tf.where(h <= w, long_side, scale_size)
    image = resize_fn(image, tf.stack([new_h, new_w]))
    top = tf.cast(tf.round(tf.cast(new_h - size, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - size, tf.float32) / 2.0), tf.int32)
    return tf.ensure_shape(image[top : top + size, left : left + size], [size, size, None])


def _decode_random_crop(
    encoded: tf.Tensor,
    feature: tfds.features.Image,
    seed: tf.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tf.Tensor:
    """Decode only timm's RandomResizedCrop box (JPEG: ``decode_and_crop_jpeg``, else decode
    then slice): uint8 ``[h, w, C]``."""
    channels = feature.shape[-1]
    if feature.encoding_format == "jpeg":
        shape = tf.image.extract_jpeg_shape(encoded)
        box = augment_lib.sample_crop_box(seed, shape[0], shape[1], scale=scale, ratio=ratio)
        return tf.image.decode_and_crop_jpeg(encoded, tf.stack(box), channels=channels)
    image = feature.decode_example(encoded)
    shape = tf.shape(image)
    top, left, h, w = augment_lib.sample_crop_box(
        seed, shape[0], shape[1], scale=scale, ratio=ratio
    )
    return image[top : top + h, left : left + w]


@functools.cache
def _randaugment(spec: str):
    """The RandAugment of ``spec`` as a ``tf.function``, one per process: it is traced once per
    image shape, and every later pipeline calls that graph (tracing it costs about 5 s of CPU
    time, as much as the rest of building a pipeline); the same ops, the same results."""
    return tf.function(augment_lib.RandAugment.from_string(spec))


def train_transform(feature: tfds.features.Image, image_size: int, config: dict[str, Any]):
    """(example seed [2], encoded example) -> {'image': float32 [S, S, 3], 'label': int32};
    with ``config['on_device']`` only the crop and resize: {'image': uint8 [S, S, 3], ...}."""
    spec = config["randaugment"]
    randaugment = _randaugment(spec) if spec else None
    size = (image_size, image_size)

    def transform(seed: tf.Tensor, example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        seeds = augment_lib.split_seed(seed, 5)

        def resize_fn(image, target):
            return augment_lib.random_interpolation_resize(
                image, target, config["interpolation"], seeds[1]
            )

        if config["random_resized_crop"]:
            crop = _decode_random_crop(
                example["image"], feature, seeds[0], config["scale"], config["ratio"]
            )
            image = tf.ensure_shape(resize_fn(crop, size), [*size, None])
        else:
            decoded = feature.decode_example(example["image"])
            image = _resize_centre_crop(decoded, image_size, 1.0, resize_fn)
        image = _to_rgb(image)
        if config["on_device"]:  # the rest runs in the train step (device_augment)
            return {"image": image, "label": tf.cast(example["label"], tf.int32)}
        if config["hflip"]:
            image = tf.image.stateless_random_flip_left_right(image, seeds[2])
        if randaugment is not None:
            image = randaugment(image, seeds[3])
        image = _normalize(image)
        if config["random_erasing"] > 0:
            image = augment_lib.random_erasing(image, seeds[4], config["random_erasing"])
        return {"image": image, "label": tf.cast(example["label"], tf.int32)}

    return transform


def eval_transform(feature: tfds.features.Image, image_size: int, crop_ratio: float):
    """encoded example -> {'image': float32 [S, S, 3], 'label': int32, 'mask': True}: shorter
    side resized (bicubic) to floor(S / crop_ratio), centre S x S crop."""

    def resize_fn(image, target):
        return augment_lib.resize(image, target, EVAL_INTERPOLATION)

    def transform(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        image = feature.decode_example(example["image"])
        image = _to_rgb(_resize_centre_crop(image, image_size, crop_ratio, resize_fn))
        label = tf.cast(example["label"], tf.int32)
        return {"image": _normalize(image), "label": label, "mask": tf.constant(True)}

    return transform
