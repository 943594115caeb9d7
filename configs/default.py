"""Embedded default: a small iMixer on scikit-learn's 8x8 handwritten digits (nothing to download).

    python -m imixer_jax.train --config configs/default.py --workdir runs/default
    python -m imixer_jax.train --config configs/default.py:mixer --workdir runs/default_mixer

Data: TFDS ``digits`` (1,437 train / 360 test images), prepared from scikit-learn on first use;
8x8 grey upsampled to 16x16 RGB, mild RandomResizedCrop (area 0.6-1), no flip (digits are not
mirror-symmetric), no RandAugment, random erasing or mixup/cutmix (tuned for 300-epoch runs),
label smoothing 0.1.
Model: iMixer with the official token mixer (iMLP, n_iter 2, n_power 8, spectral norm 0.9),
patch 4 (16 tokens), 4 blocks, D 64, T 32, C 256, H 64, no drop path; ``:mixer`` swaps in the
MLP-Mixer token MLP at the same size.
Recipe: AdamW (betas 0.9/0.999, weight decay 0.05 off 1-D params), batch 64, 30 epochs (660
steps), lr 2e-3 after a 2-epoch warm-up from 1e-6, cosine to 1e-6; evaluation every 200 steps.

Hardware: 2-core x86-64 CPU (no accelerator), 24 GB RAM, jax 0.10.2 CPU.
Measured (the whole first command, timed from a fresh process with the dataset not yet prepared,
compilation included): test top-1 98.61% (seed 0; bit-identical on every rerun; seeds 1 and 2:
98.89% and 98.33%), top-5 100%, in 52 s wall time on an otherwise idle machine (47 s inside
train_and_evaluate, about 20 s of it XLA compilation); 53-71 s while other jobs ran (load 2-4).
"""

import ml_collections

from imixer_jax.training import config as config_lib

TOKEN_MIXERS = {"imixer": "imlp", "mixer": "mlp"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``arg``: '' or 'imixer' (iMLP token mixer, the default) or 'mixer' (token MLP)."""
    name = arg or "imixer"
    if name not in TOKEN_MIXERS:
        raise ValueError(f"configs/default.py takes 'imixer' or 'mixer', got {arg!r}")
    c = config_lib.base_config(
        "imixer_s16",
        num_classes=10,
        img_size=16,
        patch_size=4,
        num_blocks=4,
        hidden_dim=64,
        tokens_mlp_dim=32,
        channels_mlp_dim=256,
        token_mixer=TOKEN_MIXERS[name],
        drop_path_rate=0.0,
    )
    c.data.name = "digits"
    c.data.crop_ratio = 1.0  # the whole (upsampled) digit, as in training
    c.data.augment.update(
        scale=(0.6, 1.0),
        hflip=False,
        randaugment="",
        random_erasing=0.0,
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
        label_smoothing=0.1,
    )
    c.batch_size, c.eval_batch_size = 64, 120
    c.optimizer.lr = 2e-3
    c.schedule.update(unit="epochs", length=30.0, warmup=2.0, cooldown=0.0)
    c.checkpoint.every_steps, c.checkpoint.keep = 200, 2
    c.log_every_steps, c.eval_every_steps = 50, 200
    return c
