"""configs/finetune.py: the vit_jax CIFAR-10 fine-tuning recipe, valid for the trainer."""

from __future__ import annotations

import numpy as np
import pytest

from configs import finetune
from imixer_jax import config as config_lib
from imixer_jax import optim


def test_recipe_is_vit_jax_and_validates():
    c = finetune.get_config("mixer_l16")
    config_lib.validate(c)
    assert (c.model.num_blocks, c.model.hidden_dim, c.model.patch_size) == (24, 1024, 16)
    assert (c.model.num_classes, c.model.img_size, c.model.drop_path_rate) == (10, 224, 0.0)
    assert c.init_from.format == "vit_jax" and c.init_from.head == "zero"
    assert c.init_from.path is None
    assert (c.optimizer.name, c.optimizer.momentum, c.optimizer.lr) == ("sgd", 0.9, 0.03)
    assert (c.optimizer.weight_decay, c.optimizer.grad_clip_norm) == (0.0, 1.0)
    assert c.batch_size == 512 and c.data.train_split == "train[:98%]"
    aug = c.data.augment
    assert aug.mixup_alpha == aug.cutmix_alpha == aug.label_smoothing == aug.random_erasing == 0


def test_schedule_is_10k_steps_with_500_warmup():
    c = finetune.get_config("")
    run = optim.plan(c, num_train=49_000)
    assert (run.total_steps, run.warmup_updates) == (10_000, 500)
    lr = optim.learning_rate(c, run)
    # Linear warm-up from 0 to 0.03 over 500 updates, then cosine to 0 at update 10,000.
    np.testing.assert_allclose([lr(0), lr(250), lr(10_000)], [0.0, 0.015, 0.0], atol=1e-9)


def test_unknown_model_is_one_line():
    with pytest.raises(ValueError, match="takes one of mixer_b16, mixer_b32, mixer_l16"):
        finetune.get_config("imixer_b16")
