"""The paper's training recipe for one TFDS dataset; shared by the per-dataset config files
(``configs/{cifar10,cifar100,food101,imagenet2012,cars196}.py``), which hold only what differs:
the dataset, its expected results and the hardware it was sized for.

Those files take the model as their argument (``--config configs/cifar10.py:imixer_s16``):
``mixer_s16``, ``mixer_b16``, ``mixer_l16``, ``imixer_s16``, ``imixer_b16`` or ``imixer_l16``
(224 px, patch 16; any registered variant is accepted). Compute is bfloat16 (override with
``--config.model.dtype=float32``); ``docs/recipe.md`` lists where the recipe deviates from the
official run.

Everything not set here is the official recipe of
``imixer_jax.training.config.base_config``: AdamW (lr
5e-4, weight decay 0.05), global batch 2048 (512 x 4 GPUs), 300 epochs of cosine schedule after a
20-epoch warm-up, 10 cool-down epochs, RandomResizedCrop 224 + flip + RandAugment
``rand-m9-mstd0.5-inc1`` + random erasing 0.25, mixup 0.8 / cutmix 1.0 / label smoothing 0.1,
drop path 0.1, eval resize 256 + centre crop 224. Added here: the dataset, its class count,
bfloat16 compute (the official runs use mixed precision) and an evaluation every 10 epochs.
"""

from __future__ import annotations

import ml_collections

from imixer_jax.training import config as config_lib

# TFDS facts: (number of classes, number of training examples).
DATASETS = {
    "cifar10": (10, 50_000),
    "cifar100": (100, 50_000),
    "food101": (101, 75_750),
    "imagenet2012": (1000, 1_281_167),
    "cars196": (196, 8_144),
}
PAPER_MODELS = ("mixer_s16", "mixer_b16", "mixer_l16", "imixer_s16", "imixer_b16", "imixer_l16")
EVAL_EVERY_EPOCHS = 10


def get_config(dataset: str, model: str | None) -> ml_collections.ConfigDict:
    """The paper recipe on ``dataset`` for registered variant ``model`` (e.g. ``'imixer_s16'``).

    Raises:
      ValueError: no model given, or a name that is not a registered variant.
    """
    if not model:
        raise ValueError(
            f"configs/{dataset}.py needs the model as its argument, e.g. "
            f"--config configs/{dataset}.py:imixer_s16 (one of {', '.join(PAPER_MODELS)})"
        )
    num_classes, num_train = DATASETS[dataset]
    c = config_lib.base_config(model, num_classes=num_classes, img_size=224)
    c.data.name = dataset
    c.model.dtype = "bfloat16"
    steps_per_epoch = max(num_train // c.batch_size, 1)
    c.eval_every_steps = EVAL_EVERY_EPOCHS * steps_per_epoch
    return c
