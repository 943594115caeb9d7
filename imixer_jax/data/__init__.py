"""Input pipeline (TFDS + tf.data, or synthetic numpy batches), on-device mixing and (opt-in,
``augment['on_device']``) on-device augmentation.

Importing this package imports neither TensorFlow nor TFDS: ``dataset_info``, ``train_batches``
and ``eval_batches`` import the TFDS pipeline (``imixer_jax.data.pipeline``) on their first call
for a TFDS dataset, and that first pipeline hides the GPUs from TensorFlow. ``data.name =
'synthetic'`` (``imixer_jax.data.synthetic``) needs neither. The embedded TFDS dataset ``digits``
(``imixer_jax.data.digits``) is registered with TFDS when the pipeline or ``data.Digits`` is
first used.
"""

from __future__ import annotations

import importlib
from typing import Any

from imixer_jax.data import tf_import
from imixer_jax.data.augment.device import augment_on_device
from imixer_jax.data.defaults import AUGMENT_DEFAULTS, MIX_KEYS, DatasetInfo
from imixer_jax.data.mixing import mix_batch
from imixer_jax.data.sources import dataset_info, eval_batches, train_batches

__all__ = [
    "AUGMENT_DEFAULTS",
    "MIX_KEYS",
    "DatasetInfo",
    "Digits",
    "augment_on_device",
    "dataset_info",
    "eval_batches",
    "mix_batch",
    "train_batches",
]


def __getattr__(name: str) -> Any:
    """``Digits`` on first access (it imports TFDS)."""
    if name == "Digits":
        tf_import.import_tensorflow()  # without its banner under an entry point
        return importlib.import_module("imixer_jax.data.digits").Digits
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
