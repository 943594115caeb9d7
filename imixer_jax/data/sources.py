"""The input pipeline's entry points, dispatching on the dataset name.

``'synthetic'`` / ``'synthetic/K'`` go to ``imixer_jax.data.synthetic`` (numpy only); every other
name is a TFDS dataset read by ``imixer_jax.data.pipeline``, which is imported (with TensorFlow
and TFDS) on the first call that needs it, never at import. All three functions take the
arguments of their ``pipeline`` counterparts, whose docstrings describe the batches.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from imixer_jax.data import synthetic
from imixer_jax.data.defaults import DatasetInfo


def _source(name: str) -> ModuleType:
    if synthetic.is_synthetic(name):
        return synthetic
    return importlib.import_module("imixer_jax.data.pipeline")


def dataset_info(name: str, **kwargs: Any) -> DatasetInfo:
    """Sizes, classes and splits of dataset ``name`` (see ``pipeline.dataset_info``)."""
    return _source(name).dataset_info(name, **kwargs)


def train_batches(*, name: str, **kwargs: Any) -> Iterator[dict]:
    """Infinite training batches of this process (see ``pipeline.train_batches``)."""
    return _source(name).train_batches(name=name, **kwargs)


def eval_batches(*, name: str, **kwargs: Any) -> Iterator[dict]:
    """One evaluation pass over this process's part of a split (see ``pipeline.eval_batches``)."""
    return _source(name).eval_batches(name=name, **kwargs)
