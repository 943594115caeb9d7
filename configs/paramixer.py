r"""Parallelized MLP-Mixer family on CIFAR-10: the official paramixer recipe.

    python -m imixer_jax.train --config configs/paramixer.py:paramixer_s16_224 \
        --workdir runs/paramixer/paramixer_s16_224

The argument is a registered variant of the family: ``vanillamixer_*``, ``paramixer_*``,
``symmixer_*``, ``asymmixer_*`` (``{s,b,l}{16,32}_224``), the weight-tied repeats
``{vanilla,para,sym}mixer_s16_224_ni{2,3,4}`` and the symmetry-breaking penalties
``asymmixer_s16_224_l{00,01,02,03,035,04,05,06,10}`` (``registry.PARAMIXER_NAMES``).

Recipe (the official command line, timm 0.9.2 defaults elsewhere): batch 96 per GPU on 4 GPUs
(global 384), AdamW lr 5e-4 scaled linearly by batch / 512 (= 3.75e-4), weight decay 0.05,
300 epochs of cosine schedule (timm --epochs, warm-up included) with a 20-epoch warm-up from 1e-6,
min lr 0, no cool-down; drop path 0.1; the iMixer augmentation (RandomResizedCrop 224 + flip,
RandAugment ``rand-m9-mstd0.5-inc1``, random erasing 0.25 per pixel, mixup 0.8 / cutmix 1.0,
label smoothing 0.1; eval resize 256 + centre crop 224); mixed precision (bfloat16 here).
Differences from ``configs/cifar10.py`` (the iMixer recipe): the batch and learning rate, min lr 0
and no cool-down (timm 0.9 defaults instead of the 0.6 ones).

Hardware: 4 GPUs on one host, data parallel (96 images per GPU).

Expected: the paper reports (CIFAR-10, S/16) that SymMixer trains worse than the vanilla and
parallelized Mixers and that the symmetry-breaking term of AsymMixer closes the gap; the numbers
are in the paper (Karakida, Ota & Taki 2024), not in the official README.
"""

from __future__ import annotations

import ml_collections

from imixer_jax.models import registry
from imixer_jax.training import config as config_lib

NUM_TRAIN = 50_000  # CIFAR-10 training examples
BATCH_PER_DEVICE, NUM_DEVICES = 96, 4
LR_BASE, LR_BASE_SIZE = 5e-4, 512
EVAL_EVERY_EPOCHS = 10


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The official paramixer CIFAR-10 recipe for variant ``arg`` (e.g. ``'symmixer_s16_224'``).

    Raises:
      ValueError: no variant, or one that is not of the parallelized Mixer family.
    """
    if arg not in registry.PARAMIXER_NAMES:
        raise ValueError(
            f"configs/paramixer.py needs a variant of the parallelized Mixer family as its "
            f"argument, e.g. --config configs/paramixer.py:paramixer_s16_224; got {arg!r} "
            f"(one of {', '.join(registry.PARAMIXER_NAMES)})"
        )
    c = config_lib.base_config(arg, num_classes=10, img_size=224)
    c.data.name = "cifar10"
    c.model.dtype = "bfloat16"
    c.batch_size = BATCH_PER_DEVICE * NUM_DEVICES
    c.optimizer.lr = LR_BASE * c.batch_size / LR_BASE_SIZE
    c.schedule.update(dict(length=300.0, warmup=20.0, cooldown=0.0, init_lr=1e-6, min_lr=0.0))
    c.eval_every_steps = EVAL_EVERY_EPOCHS * (NUM_TRAIN // c.batch_size)
    return c
