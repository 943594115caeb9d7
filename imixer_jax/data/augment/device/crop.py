"""timm's RandomResizedCrop on the device: the box cut out of the shipped canvas and resized.

The host draws the box (``augment.host.sample_crop_box``) and the interpolation
(``augment.host.sample_bilinear``) with the seeds of the host route and ships the image on a
fixed-size canvas with the box in pixel coordinates (``data.transforms``, ``on_device``). Here the
box is resized to ``S x S`` as the host's ``augment.host.resize`` resizes the cut-out crop:
TensorFlow's antialiased ``ScaleAndTranslate`` (Keys cubic, a = -0.5, or the triangle kernel for
bilinear; half-pixel centres; the kernel widened by the downscale factor, its weights
renormalised to sum to 1), rounded and clipped to uint8. The result equals TF's within one grey
level (the same float32 weights; the sums may round differently in the last bit, which moves a
value at .5, frequent with bilinear's quarter weights).

Written by hand rather than with ``jax.image.scale_and_translate``: that samples the whole input,
while the host resizes the crop alone, whose kernel is cut at the crop's edges and renormalised;
and the box is traced (one per image). Each axis is therefore a dense weight matrix
``[S, canvas]`` with the taps outside the box zeroed, and the resize is two matmuls at
``HIGHEST`` precision (a GPU's default TF32 would move pixels by up to a grey level). A box of
exactly ``S x S`` is the identity (the kernels are 1 at 0 and 0 at the other integers).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def keys_cubic(x: Array) -> Array:
    """Keys' cubic convolution kernel with a = -0.5 (TF's 'keyscubic', PIL's bicubic)."""
    x = jnp.abs(x)
    near = ((1.5 * x - 2.5) * x) * x + 1.0
    far = ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0
    return jnp.where(x >= 2.0, 0.0, jnp.where(x >= 1.0, far, near))


def triangle(x: Array) -> Array:
    """The triangle kernel (bilinear)."""
    return jnp.maximum(0.0, 1.0 - jnp.abs(x))


def resize_weights(
    canvas: int, size: int, start: Array, extent: Array, bilinear: Array, interpolation: str
) -> Array:
    """float32 ``[size, canvas]``: output pixel o of the resize of canvas pixels ``[start,
    start + extent)`` (int scalars) to ``size`` pixels is ``sum_i w[o, i] x[i]``.
    ``interpolation`` 'bicubic', 'bilinear', or 'random': bilinear where ``bilinear``."""
    extent = extent.astype(jnp.float32)
    inverse_scale = extent / size
    kernel_scale = jnp.maximum(inverse_scale, 1.0)  # antialiased: wider when shrinking
    sample = (jnp.arange(size, dtype=jnp.float32) + 0.5) * inverse_scale
    centre = jnp.arange(canvas, dtype=jnp.float32) - start.astype(jnp.float32) + 0.5
    x = (centre[None, :] - sample[:, None]) / kernel_scale
    if interpolation == "bicubic":
        weights = keys_cubic(x)
    elif interpolation == "bilinear":
        weights = triangle(x)
    else:
        weights = jnp.where(bilinear, triangle(x), keys_cubic(x))
    inside = (centre > 0.0) & (centre < extent)
    weights = jnp.where(inside[None, :], weights, 0.0)
    return weights / jnp.sum(weights, axis=1, keepdims=True)


def crop_resize(image: Array, box: Array, bilinear: Array, size: int, interpolation: str) -> Array:
    """The box ``(top, left, height, width)`` (int ``[4]``) of a uint8 canvas ``[H, W, 3]``
    resized to uint8 ``[size, size, 3]`` with ``interpolation`` ('bicubic', 'bilinear', or
    'random': bilinear where the bool scalar ``bilinear``)."""
    rows = resize_weights(image.shape[0], size, box[0], box[2], bilinear, interpolation)
    cols = resize_weights(image.shape[1], size, box[1], box[3], bilinear, interpolation)
    x = jnp.einsum("oh,hwc->owc", rows, image.astype(jnp.float32), precision="highest")
    x = jnp.einsum("pw,owc->opc", cols, x, precision="highest")
    return jnp.round(jnp.clip(x, 0.0, 255.0)).astype(jnp.uint8)
