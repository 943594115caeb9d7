"""Per-example transforms of the TFDS pipeline: encoded record -> augmented, normalised image.

``train_transform`` composes the augmentation of ``imixer_jax.data.augment.host`` in the official
order (RandomResizedCrop decoding only the crop, resize, flip, RandAugment on uint8, normalise,
random erasing on the normalised image); ``eval_transform`` is timm's resize + centre crop. Both
return float32 ``[S, S, 3]`` with mean = std = 0.5 (pixels in [-1, 1]); grey images become RGB.
With ``on_device`` the training transform only decodes and draws the crop box and the
interpolation; the image travels uint8 on the canvas of ``device_canvas``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import tensorflow as tf
import tensorflow_datasets as tfds

from imixer_jax.data.augment import host as augment_lib

EVAL_INTERPOLATION = "bicubic"  # official eval resize
# With on_device, a crop of a variable-size image is shipped as decoded when it fits a canvas of
# CANVAS_SCALE * S pixels a side (the device then shrinks it at most this much); a larger crop is
# resized to S on the host first. At S = 224 that covers ImageNet-sized images (about 500 px at
# most) except crops of most of the largest ones, for 4x the pixels of an S x S image.
CANVAS_SCALE = 2


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
) -> tuple[tf.Tensor, tf.Tensor]:
    """Decode only timm's RandomResizedCrop box (JPEG: ``decode_and_crop_jpeg``, else decode
    then slice): (uint8 ``[h, w, C]``, the box int32 ``[4]`` = (top, left, h, w))."""
    channels = feature.shape[-1]
    if feature.encoding_format == "jpeg":
        shape = tf.image.extract_jpeg_shape(encoded)
        box = augment_lib.sample_crop_box(seed, shape[0], shape[1], scale=scale, ratio=ratio)
        crop = tf.image.decode_and_crop_jpeg(encoded, tf.stack(box), channels=channels)
        return crop, tf.stack(box)
    image = feature.decode_example(encoded)
    shape = tf.shape(image)
    top, left, h, w = augment_lib.sample_crop_box(
        seed, shape[0], shape[1], scale=scale, ratio=ratio
    )
    return image[top : top + h, left : left + w], tf.stack([top, left, h, w])


def device_canvas(
    feature: tfds.features.Image, image_size: int, config: dict[str, Any]
) -> tuple[int, int]:
    """(height, width) of the canvas on which ``train_transform`` ships each image with
    ``config['on_device']``: the stored size for fixed-size images of at most
    ``CANVAS_SCALE * S`` pixels a side (CIFAR: 32 x 32, shipped whole), else ``CANVAS_SCALE * S``
    square (variable-size images: the decoded crop, zero-padded by the batching), and ``S x S``
    without ``random_resized_crop`` (the host resizes and centre-crops)."""
    if not config["random_resized_crop"]:
        return image_size, image_size
    bound = CANVAS_SCALE * image_size
    height, width = feature.shape[:2]
    if height is not None and width is not None and max(height, width) <= bound:
        return height, width
    return bound, bound


@functools.cache
def _randaugment(spec: str):
    """The RandAugment of ``spec`` as a ``tf.function``, one per process: it is traced once per
    image shape, and every later pipeline calls that graph (tracing it costs about 5 s of CPU
    time, as much as the rest of building a pipeline); the same ops, the same results."""
    return tf.function(augment_lib.RandAugment.from_string(spec))


def _for_device(
    example: dict[str, tf.Tensor],
    feature: tfds.features.Image,
    image_size: int,
    canvas: tuple[int, int],
    config: dict[str, Any],
    seeds: tf.Tensor,
    resize_fn,
) -> dict[str, tf.Tensor]:
    """The host's share of the ``on_device`` route: {'image': uint8 [h, w, 3] within
    ``canvas``, 'box': int32 [4] (top, left, height, width) of the crop in it, 'bilinear':
    bool}; the box and the interpolation are the host route's draws (same seeds)."""
    size = (image_size, image_size)
    whole = tf.constant([0, 0, image_size, image_size], tf.int32)
    bilinear = augment_lib.sample_bilinear(config["interpolation"], seeds[1])
    encoded = example["image"]
    if not config["random_resized_crop"]:
        image = _resize_centre_crop(feature.decode_example(encoded), image_size, 1.0, resize_fn)
        box = whole
    elif canvas == tuple(feature.shape[:2]):  # fixed size, shipped whole
        image = feature.decode_example(encoded)
        box = augment_lib.sample_crop_box(
            seeds[0], *canvas, scale=config["scale"], ratio=config["ratio"]
        )
        box = tf.stack(box)
    else:
        crop, box = _decode_random_crop(
            encoded, feature, seeds[0], config["scale"], config["ratio"]
        )
        fits = (box[2] <= canvas[0]) & (box[3] <= canvas[1])
        image = tf.cond(fits, lambda: crop, lambda: resize_fn(crop, size))
        box = tf.where(fits, tf.stack([0, 0, box[2], box[3]]), whole)
    return {"image": _to_rgb(image), "box": box, "bilinear": bilinear}


def train_transform(feature: tfds.features.Image, image_size: int, config: dict[str, Any]):
    """(example seed [2], encoded example) -> {'image': float32 [S, S, 3], 'label': int32}.

    With ``config['on_device']`` only the decode and the crop's draws: {'image': uint8
    [h, w, 3], 'box': int32 [4], 'bilinear': bool, 'label'}, the image within
    ``device_canvas`` (the batching pads it there) and the RandomResizedCrop box in its pixels;
    ``augment.device`` crops, resizes and augments it in the train step."""
    spec = config["randaugment"]
    randaugment = _randaugment(spec) if spec and not config["on_device"] else None
    size = (image_size, image_size)
    canvas = device_canvas(feature, image_size, config)

    def transform(seed: tf.Tensor, example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        seeds = augment_lib.split_seed(seed, 5)
        label = tf.cast(example["label"], tf.int32)

        def resize_fn(image, target):
            return augment_lib.random_interpolation_resize(
                image, target, config["interpolation"], seeds[1]
            )

        if config["on_device"]:  # the rest runs in the train step (augment.device)
            shipped = _for_device(example, feature, image_size, canvas, config, seeds, resize_fn)
            return {**shipped, "label": label}
        if config["random_resized_crop"]:
            crop, _ = _decode_random_crop(
                example["image"], feature, seeds[0], config["scale"], config["ratio"]
            )
            image = tf.ensure_shape(resize_fn(crop, size), [*size, None])
        else:
            decoded = feature.decode_example(example["image"])
            image = _resize_centre_crop(decoded, image_size, 1.0, resize_fn)
        image = _to_rgb(image)
        if config["hflip"]:
            image = tf.image.stateless_random_flip_left_right(image, seeds[2])
        if randaugment is not None:
            image = randaugment(image, seeds[3])
        image = _normalize(image)
        if config["random_erasing"] > 0:
            image = augment_lib.random_erasing(image, seeds[4], config["random_erasing"])
        return {"image": image, "label": label}

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
