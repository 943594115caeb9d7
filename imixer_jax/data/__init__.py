"""Input pipeline (TFDS + tf.data) and on-device mixing.

Importing this package registers the embedded TFDS dataset ``digits`` (``tfds.builder('digits')``)
and hides the GPUs from TensorFlow.
"""

from imixer_jax.data.digits import Digits
from imixer_jax.data.mixing import mix_batch
from imixer_jax.data.pipeline import (
    AUGMENT_DEFAULTS,
    MIX_KEYS,
    DatasetInfo,
    dataset_info,
    eval_batches,
    train_batches,
)

__all__ = [
    "AUGMENT_DEFAULTS",
    "MIX_KEYS",
    "DatasetInfo",
    "Digits",
    "dataset_info",
    "eval_batches",
    "mix_batch",
    "train_batches",
]
