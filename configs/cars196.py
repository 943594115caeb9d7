r"""Paper recipe on Stanford Cars (TFDS cars196; eval on 'test').

With 8,144 training images the global batch of 2048 gives only 3 steps per epoch (930 steps in
all); the recipe is kept as in the paper.

    python -m imixer_jax.train --config configs/cars196.py:imixer_s16 \
        --workdir runs/cars196/imixer_s16

The argument is the model: ``mixer_s16``, ``mixer_b16``, ``mixer_l16``, ``imixer_s16``,
``imixer_b16`` or ``imixer_l16`` (224 px, patch 16; any registered variant is accepted). Recipe:
``configs/paper.py`` (official settings, SPEC section 5; bfloat16 compute, override with
``--config.model.dtype=float32``).

Hardware: 4x A100 (80 GB) GPUs on one host, data parallel (512 images per GPU).

Expected top-1: iMixer comparable to MLP-Mixer under the same recipe (paper); the numbers are
not listed in the official README.
"""

from configs import paper


def get_config(arg: str | None = None):
    return paper.get_config("cars196", arg)
