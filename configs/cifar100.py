r"""Paper recipe on CIFAR-100.

    python -m imixer_jax.train --config configs/cifar100.py:imixer_s16 \
        --workdir runs/cifar100/imixer_s16

The argument is the model; the recipe and the models it takes: ``configs/paper.py``.

Hardware: 4x A100 (80 GB) GPUs on one host, data parallel (512 images per GPU).

Expected top-1: iMixer comparable to MLP-Mixer under the same recipe (paper); the numbers are
not listed in the official README.
"""

from configs import paper


def get_config(arg: str | None = None):
    """The paper recipe on cifar100 for model ``arg`` (see ``configs/paper.py``)."""
    return paper.get_config("cifar100", arg)
