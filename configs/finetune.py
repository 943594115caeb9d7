r"""Fine-tune Google's pretrained MLP-Mixer on CIFAR-10 with the vision_transformer recipe.

    python -m imixer_jax.train --config configs/finetune.py:mixer_b16 \
        --config.init_from.path=/path/to/imagenet21k/Mixer-B_16.npz \
        --workdir runs/finetune/mixer_b16

The argument is the model, ``mixer_b16`` (default), ``mixer_b32`` or ``mixer_l16``; the checkpoint
is the matching public vit_jax / big_vision ``.npz`` (``Mixer-B_16.npz``, ``Mixer-B_32.npz``,
``Mixer-L_16.npz``, pretrained on ImageNet or ImageNet-21k). Loading: ``imixer_jax.weights.
vit_jax`` (body from the checkpoint, new zero head for the 10 classes); the model computes the tanh
GELU of Google's Mixer (``approximate_gelu``), so the loaded body gives vit_jax's features.

Recipe (vit_jax ``configs/common.py`` + ``mixer_base16_cifar10.py``; details and the small
differences in docs/recipe.md#finetune): SGD with momentum 0.9, no weight decay, lr 0.03 after a
500-step linear warm-up from 0, cosine to 0, global-norm clipping 1.0, batch 512, 10,000 steps on
``train[:98%]``, 224 px; training crop 5%-100% of the area, bilinear resize, flip; no RandAugment,
erasing, mixup or label smoothing; evaluation on ``test`` resized to 224; float32.

Hardware: one 8-device TPU/GPU host in vit_jax (the 3.0 h / 9.6 h of its README are TPUv3-8).
Expected top-1 (vision_transformer README): Mixer-B/16 96.72% (ImageNet) / 96.82% (ImageNet-21k),
Mixer-L/16 96.59% / 98.34%.
"""

from __future__ import annotations

import ml_collections

from imixer_jax.training import config as config_lib

MODELS = ("mixer_b16", "mixer_b32", "mixer_l16")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``arg``: the model, one of ``MODELS`` ('' = mixer_b16)."""
    model = arg or "mixer_b16"
    if model not in MODELS:
        raise ValueError(
            f"configs/finetune.py takes one of {', '.join(MODELS)} (a published Mixer "
            f"checkpoint), got {arg!r}"
        )
    c = config_lib.base_config(
        model, num_classes=10, img_size=224, drop_path_rate=0.0, approximate_gelu=True
    )
    c.init_from.format = "vit_jax"
    c.optimizer.name, c.optimizer.momentum = "sgd", 0.9
    c.data.name = "cifar10"
    c.data.train_split = "train[:98%]"
    c.data.eval_split = "test"
    c.data.crop_ratio = 1.0  # evaluation: the whole image resized to 224
    c.data.augment.update(
        scale=(0.05, 1.0),
        interpolation="bilinear",
        hflip=True,
        randaugment="",
        random_erasing=0.0,
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
        label_smoothing=0.0,
    )
    c.batch_size, c.eval_batch_size = 512, 512
    c.optimizer.update(lr=0.03, weight_decay=0.0, grad_clip_norm=1.0)
    c.schedule.update(unit="steps", length=10_000, warmup=500, cooldown=0, init_lr=0.0, min_lr=0.0)
    c.eval_every_steps = 1_000
    c.checkpoint.every_steps = 1_000
    return c
