r"""Paper recipe on Food-101 (eval on TFDS 'validation').

    python -m imixer_jax.train --config configs/food101.py:imixer_s16 \
        --workdir runs/food101/imixer_s16

The argument is the model; the recipe and the models it takes: ``configs/paper.py``.

Hardware: 4x A100 (80 GB) GPUs on one host, data parallel (512 images per GPU).

Expected top-1: iMixer comparable to MLP-Mixer under the same recipe (paper); the numbers are
not listed in the official README.
"""

from configs import paper


def get_config(arg: str | None = None):
    """The paper recipe on food101 for model ``arg`` (see ``configs/paper.py``)."""
    return paper.get_config("food101", arg)
