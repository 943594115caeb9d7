"""``data.name = 'synthetic'``: random batches made with numpy, no TensorFlow or TFDS.

For benchmarking the trainer and smoke-testing a host (e.g. a GPU machine without TensorFlow),
as flax's fake-data benchmark configs do. The dataset is ImageNet-1k shaped: **1,000 classes,
1,281,167 train and 50,000 validation examples**; ``'synthetic/K'`` has K classes instead (e.g.
``'synthetic/10'``). Splits are ``'train'`` and ``'validation'`` (the default eval split).

Batches have the layout of the TFDS pipeline (``imixer_jax.data.pipeline``): training
``{'image': float32 [b, S, S, 3], 'label': int32 [b]}``, evaluation with ``'mask': bool [b]``,
b = global batch / process count, S = the requested image size, pixels uniform in [-1, 1]
(the normalised range). Nothing is learnable: labels are independent of the images.

Cost. Producing a batch must not slow down the step being measured, so the images of a process
are drawn once per iterator (``DISTINCT_BATCHES`` batches from (seed, process index)) and batch s
reuses image set ``s mod DISTINCT_BATCHES`` (read-only arrays, not copied); only the labels
(``b`` integers) are drawn per step, from (seed, process index, s). A batch is therefore a pure
function of (seed, step, process index, process count), like the TFDS pipeline's, and a resumed
run sees the batches of an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from imixer_jax.data.defaults import DatasetInfo, augment_config, local_batch_size

NAME = "synthetic"
NUM_CLASSES = 1000
NUM_TRAIN = 1_281_167
NUM_EVAL = 50_000
TRAIN_SPLIT, EVAL_SPLIT = "train", "validation"
DISTINCT_BATCHES = 2  # image sets per iterator; batch s uses set s mod DISTINCT_BATCHES
_EVAL_SEED = 0  # evaluation data does not depend on the run's seed


def is_synthetic(name: str) -> bool:
    """Whether ``name`` names this source (``'synthetic'`` or ``'synthetic/K'``)."""
    return name == NAME or name.startswith(NAME + "/")


def num_classes(name: str) -> int:
    """K of ``'synthetic/K'``, ``NUM_CLASSES`` for ``'synthetic'`` (ValueError otherwise)."""
    if name == NAME:
        return NUM_CLASSES
    classes = name.removeprefix(NAME + "/")
    if not (classes.isdigit() and int(classes) > 0):
        raise ValueError(
            f"dataset {name!r}: write 'synthetic' (1000 classes) or 'synthetic/K' with K a "
            f"positive number of classes, e.g. 'synthetic/10'"
        )
    return int(classes)


def _check_split(name: str, split: str, expected: str) -> None:
    if split != expected:
        raise ValueError(f"dataset {name!r} has splits 'train' and 'validation', not {split!r}")


def dataset_info(
    name: str, *, data_dir: str | None, train_split: str = "train", eval_split: str | None = None
) -> DatasetInfo:
    """The ``DatasetInfo`` of ``name`` (``data_dir`` is ignored; nothing is stored)."""
    del data_dir
    eval_split = EVAL_SPLIT if eval_split is None else eval_split
    _check_split(name, train_split, TRAIN_SPLIT)
    _check_split(name, eval_split, EVAL_SPLIT)
    return DatasetInfo(
        name=name,
        num_classes=num_classes(name),
        num_train=NUM_TRAIN,
        num_eval=NUM_EVAL,
        train_split=train_split,
        eval_split=eval_split,
        image_shape=(None, None, 3),
    )


def _rng(*entropy: int) -> np.random.Generator:
    return np.random.default_rng([e % 2**63 for e in entropy])


def _images(
    rng: np.random.Generator, count: int, batch: int, image_size: int, uint8: bool = False
) -> np.ndarray:
    """Read-only float32 ``[count, batch, S, S, 3]``, uniform in [-1, 1), or with ``uint8``
    uint8 images uniform in 0..255 (the layout of ``augment['on_device']``)."""
    shape = (count, batch, image_size, image_size, 3)
    if uint8:
        images = rng.integers(0, 256, shape, dtype=np.uint8)
    else:
        images = rng.random(shape, dtype=np.float32) * 2.0 - 1.0
    images.flags.writeable = False
    return images


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
    """Infinite training batches of this process from global step ``start_step`` on; the
    signature and layout of ``pipeline.train_batches`` (``augment`` is validated, not applied;
    with ``augment['on_device']`` the images are uint8 with the whole image as their crop
    ``'box'`` and ``'bilinear'`` False, for the train step to augment)."""
    del data_dir
    batch = local_batch_size(global_batch_size, process_index, process_count)
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    _check_split(name, split, TRAIN_SPLIT)
    uint8 = augment_config(augment)["on_device"]
    classes = num_classes(name)
    return _train_iterator(seed, process_index, start_step, batch, image_size, classes, uint8)


def _train_iterator(
    seed: int,
    process_index: int,
    start_step: int,
    batch: int,
    image_size: int,
    classes: int,
    uint8: bool,
) -> Iterator[dict]:
    images = _images(_rng(seed, process_index), DISTINCT_BATCHES, batch, image_size, uint8)
    crops = {}  # on_device: each S x S image is its own crop box (the device resize: identity)
    if uint8:
        box = np.array([0, 0, image_size, image_size], np.int32)
        crops = {"box": np.tile(box, (batch, 1)), "bilinear": np.zeros(batch, bool)}
    step = start_step
    while True:
        labels = _rng(seed, process_index, step).integers(0, classes, batch, dtype=np.int32)
        yield {"image": images[step % DISTINCT_BATCHES], "label": labels, **crops}
        step += 1


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
    """One pass over this process's part of the ``NUM_EVAL`` validation examples, padded as
    ``pipeline.eval_batches`` pads (every process yields the same number of batches; the
    missing examples are zero images with label 0 and mask False)."""
    del data_dir
    batch = local_batch_size(global_batch_size, process_index, process_count)
    if not 0.0 < crop_ratio <= 1.0:
        raise ValueError(f"crop_ratio must be in (0, 1], got {crop_ratio}")
    _check_split(name, split, EVAL_SPLIT)
    classes = num_classes(name)
    # The part sizes of tfds.even_splits: process i holds examples [i n // P, (i + 1) n // P).
    counts = [
        (i + 1) * NUM_EVAL // process_count - i * NUM_EVAL // process_count
        for i in range(process_count)
    ]
    num_batches = -(-max(counts) // batch)
    return _eval_iterator(
        process_index, counts[process_index], num_batches, batch, image_size, classes
    )


def _eval_iterator(
    process_index: int, count: int, num_batches: int, batch: int, image_size: int, classes: int
) -> Iterator[dict]:
    images = _images(_rng(_EVAL_SEED, process_index), 1, batch, image_size)[0]
    for index in range(num_batches):
        rng = _rng(_EVAL_SEED, process_index, index)
        labels = rng.integers(0, classes, batch, dtype=np.int32)
        mask = np.arange(index * batch, (index + 1) * batch) < count
        if mask.all():
            yield {"image": images, "label": labels, "mask": mask}
        else:
            keep = mask[:, None, None, None]
            yield {
                "image": np.where(keep, images, np.float32(0.0)),
                "label": np.where(mask, labels, 0).astype(np.int32),
                "mask": mask,
            }
