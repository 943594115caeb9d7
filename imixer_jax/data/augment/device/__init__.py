"""The per-example augmentation after the crop, on the accelerator, in JAX (opt-in).

With ``augment['on_device'] = True`` the host pipeline stops after RandomResizedCrop and the
resize (decode, crop box, resize to S x S, uint8) and ships uint8 images, 4x less host-to-device
traffic than float32; ``augment_batch`` then runs inside the jitted train step, before mixup:
horizontal flip, RandAugment, normalisation (``x / 127.5 - 1``) and random erasing, vmapped over
the batch. Every op equals its TensorFlow twin in ``imixer_jax.data.augment.host`` (exactly, the
affine warps within one grey level) and every sampler draws from the same distribution (tested),
so the device route is equal in distribution to the host route, not equal draw by draw: the host
draws with TF stateless seeds, the device with ``jax.random``.

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
    "erasing_box",
    "random_erasing",
    "randaugment",
    "sample_layer",
]


def augment_example(image: Array, key: Array, augment: Mapping[str, Any]) -> Array:
    """Flip, RandAugment, normalise and erase one uint8 ``[S, S, 3]`` image as the host's
    ``train_transform`` does after the resize; returns float32 ``[S, S, 3]``."""
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


def augment_batch(key: Array, images: Array, augment: Mapping[str, Any]) -> Array:
    """Augment a global uint8 batch ``[B, S, S, 3]`` (``augment``: the ``data.augment``
    mapping); returns float32 ``[B, S, S, 3]`` in the layout of the host route."""
    if images.dtype != jnp.uint8:
        raise TypeError(
            f"augment.on_device needs uint8 images from the input pipeline, got {images.dtype}; "
            "feed the batches of data.train_batches built with the same augment config"
        )
    key = jax.random.fold_in(key, STREAM)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(images.shape[0]))
    return jax.vmap(lambda image, k: augment_example(image, k, augment))(images, keys)


def augment_on_device(key: Array, images: Array, augment: Mapping[str, Any]) -> Array:
    """The train step's hook: ``augment_batch`` if ``augment['on_device']``, else ``images``
    unchanged (the host already augmented them)."""
    if not augment.get("on_device", False):
        return images
    return augment_batch(key, images, augment)
