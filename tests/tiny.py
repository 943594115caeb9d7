"""The tiny model and trainer configs the tests share (import them; ``conftest.py`` holds the
suite-wide setup). Each dict is a set of model-config overrides; copy it before changing it."""

from __future__ import annotations

import ml_collections

# Model tests (forward, gradients, layouts): 16 tokens of D=16, two blocks.
MODEL = dict(
    num_classes=10,
    img_size=32,
    patch_size=8,
    num_blocks=2,
    hidden_dim=16,
    tokens_mlp_dim=8,
    channels_mlp_dim=32,
)
# The pinned outputs (tests/pinned.py): 16 px images, drop path on.
PINNED = dict(
    num_classes=10,
    img_size=16,
    patch_size=4,
    num_blocks=2,
    hidden_dim=16,
    tokens_mlp_dim=8,
    channels_mlp_dim=32,
    drop_path_rate=0.1,
)
# Training runs on the embedded digits (8 px images scaled to 16): one block, cheap to compile.
TRAINER = dict(img_size=16, patch_size=4, num_blocks=1, hidden_dim=16, tokens_mlp_dim=8)
TRAINER.update(channels_mlp_dim=32, n_power=2, drop_path_rate=0.1)


def trainer_config(
    data_dir: str,
    model: str = "imixer_s16",
    *,
    steps: int = 8,
    warmup: float = 2.0,
    eval_batch_size: int = 120,
    log_every: int = 2,
    eval_every: int = 4,
    checkpoint_every: int = 2,
    keep: int = 2,
    **model_overrides,
) -> ml_collections.ConfigDict:
    """The default config shrunk to ``steps`` steps of batch 16 of a ``TRAINER`` model."""
    from configs import default
    from imixer_jax.training import config as config_lib

    c = default.get_config()
    c.model = config_lib.model_section(model, num_classes=10, **{**TRAINER, **model_overrides})
    c.data.data_dir = data_dir
    c.batch_size, c.eval_batch_size = 16, eval_batch_size
    c.schedule.unit, c.schedule.length, c.schedule.warmup = "steps", float(steps), warmup
    c.log_every_steps, c.eval_every_steps = log_every, eval_every
    c.checkpoint.every_steps, c.checkpoint.keep = checkpoint_every, keep
    return c
