"""The per-example augmentation from the crop on, on the accelerator, in JAX (opt-in).

With ``augment['on_device'] = True`` the host pipeline decodes each image, draws its
RandomResizedCrop box and interpolation, and ships the image uint8 on a fixed-size canvas (its
stored size, e.g. CIFAR's 32 x 32, or a bounded one for variable-size JPEGs; see
``data.transforms.device_canvas``) with the box. ``augment_batch`` then runs inside the jitted
train step, before mixup: the box cut out and resized to S x S (``crop``), horizontal flip,
RandAugment, normalisation (``x / 127.5 - 1``) and random erasing, vmapped over the batch. The
crop and resize equal the host's within one grey level, draw for draw (the host drew the box and
the interpolation with the host route's seeds); every later op equals its TensorFlow twin in
``imixer_jax.data.augment.host`` (exactly, the affine warps within one grey level) and every
sampler draws from the same distribution (tested), so the device route is equal in distribution
to the host route, not equal draw by draw: the host draws with TF stateless seeds, the device
with ``jax.random``.

Reproducibility. Example i of global batch s uses the key ``fold_in(fold_in(step key, STREAM),
i)``, where the step key is the train step's ``fold_in(root, s)``: a resumed run replays an
uninterrupted one exactly, and the keys do not depend on the number of devices or processes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from imixer_jax.data.augment.device.crop import crop_resize, resize_weights
from imixer_jax.data.augment.device.erasing import erasing_box, random_erasing
from imixer_jax.data.augment.device.randaugment import (
    apply_layer,
    apply_op,
    randaugment,
    sample_layer,
)
from imixer_jax.data.augment.policy import RandAugmentPolicy

Array = jax.Array
STREAM = 0x41554701  # folded into the step key: the augmentation's own random stream
# uint8 -> float32 with mean = std = 0.5, the host's ``x / 127.5 - 1`` as a table: XLA would
# multiply by the rounded reciprocal of 127.5 instead, one ulp off for most values.
NORMALISED = np.arange(256, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)

__all__ = [
    "NORMALISED",
    "STREAM",
    "apply_layer",
    "apply_op",
    "augment_batch",
    "augment_example",
    "augment_on_device",
    "crop_resize",
    "erasing_box",
    "random_erasing",
    "randaugment",
    "resize_weights",
    "sample_layer",
]


def augment_example(
    image: Array,
    box: Array,
    bilinear: Array,
    key: Array,
    augment: Mapping[str, Any],
    image_size: int,
) -> Array:
    """Crop box ``(top, left, height, width)`` (int ``[4]``) of the uint8 canvas ``image``
    ``[H, W, 3]`` resized to ``image_size`` (bilinearly where the bool ``bilinear``, with
    ``augment['interpolation']`` 'random'), flipped, RandAugmented, normalised and erased as the
    host's ``train_transform`` does; returns float32 ``[S, S, 3]``."""
    image = crop_resize(image, box, bilinear, image_size, augment["interpolation"])
    k_flip, k_randaugment, k_erase = jax.random.split(key, 3)
    if augment["hflip"]:
        image = jnp.where(jax.random.uniform(k_flip) < 0.5, image[:, ::-1], image)
    if augment["randaugment"]:
        policy = RandAugmentPolicy.from_string(augment["randaugment"])
        image = randaugment(image, k_randaugment, policy)
    x = jnp.asarray(NORMALISED)[image]
    if augment["random_erasing"] > 0:
        x = random_erasing(x, k_erase, augment["random_erasing"])
    return x


def augment_batch(
    key: Array, batch: Mapping[str, Array], augment: Mapping[str, Any], image_size: int
) -> Array:
    """Augment a global batch of the pipeline's ``on_device`` layout (``'image'`` uint8
    ``[B, H, W, 3]`` canvases, ``'box'`` int32 ``[B, 4]``, ``'bilinear'`` bool ``[B]``;
    ``augment``: the ``data.augment`` mapping); returns float32 ``[B, S, S, 3]``,
    S = ``image_size``, in the layout of the host route."""
    images = batch["image"]
    if images.dtype != jnp.uint8 or "box" not in batch or "bilinear" not in batch:
        raise TypeError(
            "augment.on_device needs uint8 images with their crop 'box' and 'bilinear' from the "
            f"input pipeline, got {images.dtype} images and keys {sorted(batch)}; feed the "
            "batches of data.train_batches built with the same augment config"
        )
    key = jax.random.fold_in(key, STREAM)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(images.shape[0]))
    return jax.vmap(
        lambda image, box, bilinear, k: augment_example(
            image, box, bilinear, k, augment, image_size
        )
    )(images, batch["box"], batch["bilinear"], keys)


def augment_on_device(
    key: Array, batch: Mapping[str, Array], augment: Mapping[str, Any], image_size: int
) -> Array:
    """The train step's hook: the images of ``augment_batch`` if ``augment['on_device']``,
    else ``batch['image']`` unchanged (the host already augmented them)."""
    if not augment.get("on_device", False):
        return batch["image"]
    return augment_batch(key, batch, augment, image_size)
