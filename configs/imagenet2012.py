r"""Paper recipe on ImageNet-1k (TFDS imagenet2012; eval on 'validation'). The archives must be
placed in TFDS's manual_dir and the dataset prepared beforehand.

    python -m imixer_jax.train --config configs/imagenet2012.py:imixer_s16 \
        --workdir runs/imagenet2012/imixer_s16

The argument is the model: ``mixer_s16``, ``mixer_b16``, ``mixer_l16``, ``imixer_s16``,
``imixer_b16`` or ``imixer_l16`` (224 px, patch 16; any registered variant is accepted). Recipe:
``configs/paper.py`` (official settings, SPEC section 5; bfloat16 compute, override with
``--config.model.dtype=float32``).

Hardware: a TPU pod slice (e.g. v4-32: 16 chips, 4 hosts) or 4+ A100 hosts; add
``--config.distributed.initialize=always`` on a Cloud TPU pod and run the command on every host.

Expected top-1: iMixer comparable to MLP-Mixer under the same recipe (paper); the numbers are
not listed in the official README.
"""

from configs import paper


def get_config(arg: str | None = None):
    return paper.get_config("imagenet2012", arg)
