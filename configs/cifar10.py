r"""Paper recipe on CIFAR-10.

    python -m imixer_jax.train --config configs/cifar10.py:imixer_s16 \
        --workdir runs/cifar10/imixer_s16

The argument is the model; the recipe and the models it takes: ``configs/paper.py``.

Hardware: 4x A100 (80 GB) GPUs on one host, data parallel (512 images per GPU, as the official run).

Expected top-1 (official README, n_iter 2): iMixer-S/16 88.56, iMixer-B/16 89.07, iMixer-L/16
87.48 (the 2023 README, n_iter 1: 88.54 / 89.21 / 87.68). MLP-Mixer under the same recipe: the
paper reports iMixer comparable to or better than it; the numbers are not listed in the official
README.
"""

from configs import paper


def get_config(arg: str | None = None):
    """The paper recipe on cifar10 for model ``arg`` (see ``configs/paper.py``)."""
    return paper.get_config("cifar10", arg)
