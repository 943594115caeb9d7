"""The input pipeline's entry points, dispatching on the dataset name.

``'synthetic'`` / ``'synthetic/K'`` go to ``imixer_jax.data.synthetic`` (numpy only); every other
name is a TFDS dataset read by ``imixer_jax.data.pipeline``, which is imported (with TensorFlow
and TFDS) on the first call that needs it, never at import. The batches are described in the
docstrings of ``pipeline.train_batches`` and ``pipeline.eval_batches``; both sources yield the
same layout.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import Any

from imixer_jax.data import synthetic, tf_import
from imixer_jax.data.defaults import DatasetInfo


def _source(name: str) -> ModuleType:
    if synthetic.is_synthetic(name):
        return synthetic
    tf_import.import_tensorflow()  # without its banner under an entry point
    return importlib.import_module("imixer_jax.data.pipeline")


def dataset_info(
    name: str, *, data_dir: str | None, train_split: str = "train", eval_split: str | None = None
) -> DatasetInfo:
    """Sizes, classes and splits of dataset ``name``; ``eval_split`` None picks 'validation' if
    the dataset has it, else 'test'."""
    return _source(name).dataset_info(
        name, data_dir=data_dir, train_split=train_split, eval_split=eval_split
    )


def train_batches(
    *,
    name: str,
    data_dir: str | None,
    split: str,
    image_size: int,
    global_batch_size: int,
    seed: int,
    start_step: int,
    process_index: int,
    process_count: int,
    augment: Mapping[str, Any],
) -> Iterator[dict]:
    """Infinite training batches ``{'image': float32 [b, S, S, 3], 'label': int32 [b]}`` of this
    process from global step ``start_step`` on, b = global_batch_size / process_count; with
    ``augment['on_device']`` uint8 canvases with their crop ``'box'`` int32 [b, 4] and
    ``'bilinear'`` bool [b] (cropped, resized and augmented on the device by the train step)."""
    return _source(name).train_batches(
        name=name,
        data_dir=data_dir,
        split=split,
        image_size=image_size,
        global_batch_size=global_batch_size,
        seed=seed,
        start_step=start_step,
        process_index=process_index,
        process_count=process_count,
        augment=augment,
    )


def eval_batches(
    *,
    name: str,
    data_dir: str | None,
    split: str,
    image_size: int,
    global_batch_size: int,
    process_index: int,
    process_count: int,
    crop_ratio: float,
) -> Iterator[dict]:
    """One pass over this process's part of ``split``: ``{'image': float32 [b, S, S, 3],
    'label': int32 [b], 'mask': bool [b]}``, padded so that every process yields as many."""
    return _source(name).eval_batches(
        name=name,
        data_dir=data_dir,
        split=split,
        image_size=image_size,
        global_batch_size=global_batch_size,
        process_index=process_index,
        process_count=process_count,
        crop_ratio=crop_ratio,
    )
