r"""Paper recipe on CIFAR-100.

    python -m imixer_jax.train --config configs/cifar100.py:imixer_s16 \
        --workdir runs/cifar100/imixer_s16

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
    return paper.get_config("cifar100", arg)
