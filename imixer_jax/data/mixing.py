"""Mixup / CutMix with label smoothing on device (timm ``Mixup``, mode 'batch').

One lambda per (global) batch; cutmix instead of mixup with probability ``switch_prob`` when
both are enabled; the partner of example i is example B - 1 - i (the batch flipped along axis 0);
the cutmix lambda is corrected to the area of the clipped box; targets are timm's
``mixup_target`` (smoothed one-hots of the labels and of the flipped labels, mixed by lambda).

Pure jnp, so it runs inside the jitted train step on a global ``jax.Array`` sharded along the
batch axis: the random draws are scalars from a replicated key, the flip is a collective permute
that XLA inserts, and everything else is elementwise, so the result does not depend on the
number of devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _soft_targets(
    labels: jax.Array, partner_labels: jax.Array, lam: jax.Array, num_classes: int, smoothing: float
) -> jax.Array:
    """timm ``mixup_target``: lam * smooth(one_hot(labels)) + (1 - lam) * smooth(one_hot(flip)).

    Written as off + (on - off) * (lam [c == label] + (1 - lam) [c == partner label]) with
    selects instead of products, so the value cannot depend on how XLA fuses or contracts the
    arithmetic around the batch flip (which differs between one device and a sharded batch).
    ``[B, K]`` float32.
    """
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    classes = jnp.arange(num_classes)[None, :]
    weight = jnp.where(labels[:, None] == classes, lam, 0.0) + jnp.where(
        partner_labels[:, None] == classes, 1.0 - lam, 0.0
    )
    return (off + (on - off) * weight).astype(jnp.float32)


def _cutmix_box(
    key: jax.Array, lam: jax.Array, height: int, width: int
) -> tuple[jax.Array, jax.Array]:
    """timm ``rand_bbox`` + ``cutmix_bbox_and_lam(correct_lam=True)``.

    Returns the box mask ``[H, W]`` (True inside the box) and the corrected lambda
    ``1 - box area / (H W)``.
    """
    ratio = jnp.sqrt(1.0 - lam)
    cut_h = jnp.floor(height * ratio).astype(jnp.int32)
    cut_w = jnp.floor(width * ratio).astype(jnp.int32)
    key_y, key_x = jax.random.split(key)
    cy = jax.random.randint(key_y, (), 0, height)
    cx = jax.random.randint(key_x, (), 0, width)
    yl = jnp.clip(cy - cut_h // 2, 0, height)
    yh = jnp.clip(cy + cut_h // 2, 0, height)
    xl = jnp.clip(cx - cut_w // 2, 0, width)
    xh = jnp.clip(cx + cut_w // 2, 0, width)
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    box = (rows >= yl) & (rows < yh) & (cols >= xl) & (cols < xh)
    area = ((yh - yl) * (xh - xl)).astype(jnp.float32)
    return box, 1.0 - area / float(height * width)


def mix_batch(
    key: jax.Array,
    images: jax.Array,
    labels: jax.Array,
    *,
    num_classes: int,
    mixup_alpha: float,
    cutmix_alpha: float,
    switch_prob: float,
    label_smoothing: float,
) -> tuple[jax.Array, jax.Array]:
    """Mix a batch and build its soft targets (timm ``Mixup(mode='batch', correct_lam=True)``).

    Args:
      key: PRNG key, the same on every device (e.g. ``fold_in(root, step)``).
      images: ``[B, H, W, C]`` float, any dtype (mixing is computed in float32, result cast back).
      labels: int ``[B]`` class indices.
      num_classes: K.
      mixup_alpha: Beta(alpha, alpha) parameter of mixup; <= 0 disables mixup.
      cutmix_alpha: Beta(alpha, alpha) parameter of cutmix; <= 0 disables cutmix.
      switch_prob: probability of cutmix instead of mixup when both are enabled.
      label_smoothing: timm's smoothing epsilon (off value eps / K, on value 1 - eps + eps / K).

    Returns:
      ``(mixed images [B, H, W, C] (dtype of images), soft targets float32 [B, K])``; each target
      row sums to 1. With both alphas <= 0 the images are returned unchanged and only smoothing
      applies. B should be even (timm asserts it); with an odd B the middle example is its own
      partner.
    """
    # The partner is the batch flipped along axis 0. The barrier materialises the flip before
    # any arithmetic, so one device and a sharded batch (where the flip is a collective permute)
    # run the same elementwise code and give bit-identical results.
    partner_labels = jax.lax.optimization_barrier(jnp.flip(labels, axis=0))
    mixup_on, cutmix_on = mixup_alpha > 0.0, cutmix_alpha > 0.0
    if not (mixup_on or cutmix_on):
        return images, _soft_targets(labels, partner_labels, 1.0, num_classes, label_smoothing)
    key_switch, key_mixup, key_cutmix, key_box = jax.random.split(key, 4)
    x = images.astype(jnp.float32)
    partner = jax.lax.optimization_barrier(jnp.flip(x, axis=0))
    height, width = images.shape[1], images.shape[2]

    if mixup_on:
        lam_mixup = jax.random.beta(key_mixup, mixup_alpha, mixup_alpha)
        mixed_mixup = x + (1.0 - lam_mixup) * (partner - x)  # = lam x + (1 - lam) partner
    if cutmix_on:
        lam_raw = jax.random.beta(key_cutmix, cutmix_alpha, cutmix_alpha)
        box, lam_cutmix = _cutmix_box(key_box, lam_raw, height, width)
        mixed_cutmix = jnp.where(box[None, :, :, None], partner, x)

    if mixup_on and cutmix_on:
        cutmix = jax.random.uniform(key_switch) < switch_prob
        lam = jnp.where(cutmix, lam_cutmix, lam_mixup)
        mixed = jnp.where(cutmix, mixed_cutmix, mixed_mixup)
    elif mixup_on:
        lam, mixed = lam_mixup, mixed_mixup
    else:
        lam, mixed = lam_cutmix, mixed_cutmix
    targets = _soft_targets(labels, partner_labels, lam, num_classes, label_smoothing)
    return mixed.astype(images.dtype), targets
