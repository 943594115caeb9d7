r"""Paper recipe on ImageNet-1k (TFDS imagenet2012; eval on 'validation'). The archives must be
placed in TFDS's manual_dir and the dataset prepared beforehand.

    python -m imixer_jax.train --config configs/imagenet2012.py:imixer_s16 \
        --workdir runs/imagenet2012/imixer_s16

The argument is the model; the recipe and the models it takes: ``configs/paper.py``.

Hardware: a TPU pod slice (e.g. v4-32: 16 chips, 4 hosts) or 4+ A100 hosts; add
``--config.distributed.initialize=always`` on a Cloud TPU pod and run the command on every host.

Expected top-1: iMixer comparable to MLP-Mixer under the same recipe (paper); the numbers are
not listed in the official README.
"""

from configs import paper


def get_config(arg: str | None = None):
    """The paper recipe on imagenet2012 for model ``arg`` (see ``configs/paper.py``)."""
    return paper.get_config("imagenet2012", arg)
