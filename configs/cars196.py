r"""Paper recipe on Stanford Cars (TFDS cars196; eval on 'test').

With 8,144 training images the global batch of 2048 gives only 3 steps per epoch (930 steps in
all); the recipe is kept as in the paper.

    python -m imixer_jax.train --config configs/cars196.py:imixer_s16 \
        --workdir runs/cars196/imixer_s16

The argument is the model; the recipe and the models it takes: ``configs/paper.py``.

Hardware: 4x A100 (80 GB) GPUs on one host, data parallel (512 images per GPU).

Expected top-1: iMixer comparable to MLP-Mixer under the same recipe (paper); the numbers are
not listed in the official README.
"""

from configs import paper


def get_config(arg: str | None = None):
    """The paper recipe on cars196 for model ``arg`` (see ``configs/paper.py``)."""
    return paper.get_config("cars196", arg)
