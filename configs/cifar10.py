r"""Paper recipe on CIFAR-10.

    python -m imixer_jax.train --config configs/cifar10.py:imixer_s16 \
        --workdir runs/cifar10/imixer_s16

The argument is the model: ``mixer_s16``, ``mixer_b16``, ``mixer_l16``, ``imixer_s16``,
``imixer_b16`` or ``imixer_l16`` (224 px, patch 16; any registered variant is accepted). Recipe:
``configs/paper.py`` (official settings, SPEC section 5; bfloat16 compute, override with
``--config.model.dtype=float32``).

Hardware: 4x A100 (80 GB) GPUs on one host, data parallel (512 images per GPU, as the official run).

Expected top-1 (official README, n_iter 2): iMixer-S/16 88.56, iMixer-B/16 89.07, iMixer-L/16
87.48 (the 2023 README, n_iter 1: 88.54 / 89.21 / 87.68). MLP-Mixer under the same recipe: the
paper reports iMixer comparable to or better than it; the numbers are not listed in the official
README.
"""

from configs import paper


def get_config(arg: str | None = None):
    return paper.get_config("cifar10", arg)
