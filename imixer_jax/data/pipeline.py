"""Input pipeline: any TFDS image-classification dataset -> per-process numpy batches.

Reproducibility. A training batch is a pure function of (seed, step, process_index,
process_count): each process reads its own ``tfds.even_splits`` part in the stored order, and the
stream of examples is the concatenation of epochs; epoch e is that part shuffled with a seed
derived from (seed, process_index, e), and every example's augmentation is drawn with stateless
ops from (seed, process_index, e, index within the epoch). Resuming at ``start_step`` k starts the
stream at epoch ``k b // n`` and skips ``k b mod n`` raw (still encoded) records before any
decoding or augmentation, so a resumed run sees exactly the batches of an uninterrupted one.
The shuffle is tf.data's buffer shuffle (buffer ``min(n, SHUFFLE_BUFFER)`` encoded records: a
uniform permutation when the part fits, e.g. cifar10 and digits) with an explicit op seed; it is
reproducible as long as nobody calls ``tf.random.set_seed`` with a different global seed.

Images leave the pipeline as float32 ``[b, S, S, 3]`` normalised with mean = std = 0.5
(``x / 127.5 - 1``, i.e. pixels in [-1, 1]; random-erasing noise is N(0, 1) and may exceed that
range, as in timm). Grey datasets are repeated to 3 channels. Mixup/CutMix and label smoothing are
not done here but on device by ``imixer_jax.data.mix_batch`` with the ``MIX_KEYS`` of the same
``augment`` mapping. With ``augment['on_device']`` training images leave decoded, uint8, on a
fixed canvas ``[b, H, W, 3]`` (``transforms.device_canvas``: CIFAR's 32 x 32 as stored; a
variable-size JPEG's crop, decoded with ``decode_and_crop_jpeg`` and zero-padded to 2S x 2S),
with the RandomResizedCrop box (``'box'`` int32 ``[b, 4]``) and interpolation (``'bilinear'``
bool ``[b]``) drawn here, and the train step crops, resizes, flips, applies RandAugment,
normalises and erases them (``imixer_jax.data.augment.device``).

The pipeline never downloads: a dataset that is not prepared raises a one-line
``FileNotFoundError`` that says how to prepare it, before anything is built. The embedded
``digits`` dataset is the exception: it needs no network and is prepared on first use.

Deviations from the official timm 0.6.11 loader (choices, see also ``augment``): the official run
mixes in the collate function on uint8 images (blend rounded to uint8) of each GPU's local batch
with that process's own lambda, and erases afterwards on the normalised batch; here erasing is
per example in tf.data (before mixing) and ``mix_batch`` mixes the float global batch with one
lambda, so the result does not depend on the number of devices. The official command uses
timm's default train interpolation 'random'; the default here is the paper's 'bicubic'
(``augment['interpolation'] = 'random'`` reproduces timm). ``docs/recipe.md`` lists every
deviation from the official run.

TensorFlow is kept off the GPU (``tf.config.set_visible_devices([], 'GPU')`` when the first
pipeline is built, not at import) and runs tf.data on a private pool of as many threads as this
process has CPU cores, one thread per op.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Mapping
from typing import Any

import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from imixer_jax.data import transforms
from imixer_jax.data.augment.host.seeds import split_seed
from imixer_jax.data.defaults import DatasetInfo, augment_config, local_batch_size
from imixer_jax.data.digits import Digits

SHUFFLE_BUFFER = 50_000  # encoded records per process
_EMBEDDED = (Digits.name,)  # prepared on first use (no download)


@functools.cache
def _hide_gpus_from_tensorflow() -> None:
    """Keep TF (data only) off the accelerators, which belong to JAX; runs once, when the first
    pipeline is built (not at import, so importing has no side effect on TensorFlow)."""
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError as err:  # TF devices already initialised by someone else
        logging.warning("could not hide GPUs from TensorFlow: %s", err)


def _default_data_dir() -> str:
    from tensorflow_datasets.core import constants

    return constants.DATA_DIR


def _prepared_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    """The TFDS builder of ``name``, prepared (the embedded datasets on first use) or an error."""
    _hide_gpus_from_tensorflow()
    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared():
        return builder
    if builder.name in _EMBEDDED:
        logging.info("preparing the embedded dataset %r in %s", name, builder.data_dir)
        builder.download_and_prepare()
        return builder
    root = data_dir or _default_data_dir()
    manual = (
        f"put its manually downloaded files in {root}/downloads/manual, then "
        if builder.MANUAL_DOWNLOAD_INSTRUCTIONS
        else ""
    )
    raise FileNotFoundError(
        f"TFDS dataset {name!r} is not prepared in data_dir {root!r} (no {builder.data_dir}) "
        f"and the input pipeline does not download; {manual}prepare it once with "
        f"`tfds build {name} --data_dir={root}`"
    )


def _image_feature(builder: tfds.core.DatasetBuilder) -> tfds.features.Image:
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise ValueError(
            f"dataset {builder.name!r} needs 'image' and 'label' features, has {list(features)}"
        )
    image = features["image"]
    if not isinstance(image, tfds.features.Image) or image.shape[-1] not in (1, 3):
        raise ValueError(f"dataset {builder.name!r}: 'image' must be a 1- or 3-channel Image")
    return image


def dataset_info(
    name: str, *, data_dir: str | None, train_split: str = "train", eval_split: str | None = None
) -> DatasetInfo:
    """Sizes and classes of TFDS dataset ``name`` (prepares ``digits`` on first use).

    ``eval_split`` defaults to 'validation' if the dataset has one, else 'test'. Split strings
    may be slices ('train[:90%]').
    """
    builder = _prepared_builder(name, data_dir)
    image = _image_feature(builder)
    splits = builder.info.splits
    if eval_split is None:
        eval_split = next((s for s in ("validation", "test") if s in splits), None)
        if eval_split is None:
            raise ValueError(f"dataset {name!r} has no 'validation' or 'test' split: {splits}")
    return DatasetInfo(
        name=name,
        num_classes=builder.info.features["label"].num_classes,
        num_train=splits[train_split].num_examples,
        num_eval=splits[eval_split].num_examples,
        train_split=train_split,
        eval_split=eval_split,
        image_shape=tuple(image.shape),
    )


def options(threads: int | None = None) -> tf.data.Options:
    """The pipeline's tf.data options: deterministic, a private pool of ``threads`` threads
    (default: this process's CPU cores), one thread per op."""
    if threads is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        threads = cores or os.cpu_count() or 1
    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = max(1, threads)
    options.threading.max_intra_op_parallelism = 1
    # With autotuning on, tearing down an infinite training iterator at interpreter exit can
    # stall 8-55 s on tf.data's autotune thread (seen with gdb); parallel calls then use the
    # private pool's size, which measured the same throughput here.
    options.autotune.enabled = False
    return options


def _raw_part(builder: tfds.core.DatasetBuilder, part) -> tf.data.Dataset:
    """This process's examples in stored order, image still encoded: {'image': string, 'label'}."""
    ds = builder.as_dataset(
        split=part,
        shuffle_files=False,
        decoders={"image": tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(try_autocache=False),
    )
    return ds.map(lambda ex: {"image": ex["image"], "label": ex["label"]})


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
    """Infinite training batches of this process, from global step ``start_step`` on.

    Yields ``{'image': float32 [b, S, S, 3], 'label': int32 [b]}`` (with
    ``augment['on_device']``: uint8 canvases ``[b, H, W, 3]`` with ``'box'`` and ``'bilinear'``,
    see the module doc), b = global_batch_size / process_count, S = image_size: this process's
    share of global batch ``start_step``, ``start_step + 1``, ... A restart with
    ``start_step=k`` yields exactly the batches an uninterrupted run yields from step k on.
    ``augment`` overrides ``AUGMENT_DEFAULTS`` (unknown keys are an error; the ``MIX_KEYS`` are
    accepted and ignored here).
    """
    batch = local_batch_size(global_batch_size, process_index, process_count)
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    config = augment_config(augment)
    builder = _prepared_builder(name, data_dir)
    feature = _image_feature(builder)
    part = tfds.even_splits(split, n=process_count)[process_index]
    num_examples = builder.info.splits[part].num_examples
    if num_examples == 0:
        raise ValueError(f"{name} split {split!r} has no examples for process {process_index}")
    first_epoch, skip = divmod(start_step * batch, num_examples)
    logging.info(
        "train %s[%s] process %d/%d: %d examples, batch %d, start step %d (epoch %d + %d)",
        name,
        split,
        process_index,
        process_count,
        num_examples,
        batch,
        start_step,
        first_epoch,
        skip,
    )

    raw = _raw_part(builder, part)
    root = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64), process_index)
    shuffle_root, example_root = tf.unstack(split_seed(root, 2))
    buffer = min(num_examples, SHUFFLE_BUFFER)
    transform = transforms.train_transform(feature, image_size, config)

    def epoch_examples(epoch: tf.Tensor) -> tf.data.Dataset:
        shuffle_seed = tf.random.stateless_uniform(
            [],
            tf.random.experimental.stateless_fold_in(shuffle_root, epoch),
            minval=0,
            maxval=2**31 - 1,
            dtype=tf.int64,
        )
        epoch_seed = tf.random.experimental.stateless_fold_in(example_root, epoch)
        shuffled = raw.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
        return shuffled.enumerate().map(
            lambda index, example: (
                tf.random.experimental.stateless_fold_in(epoch_seed, index),
                example,
            )
        )

    ds = tf.data.Dataset.counter(first_epoch).flat_map(epoch_examples).skip(skip)
    ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE)
    ds = train_batching(ds, batch, feature, image_size, config)
    return ds.prefetch(2).with_options(options()).as_numpy_iterator()


def train_batching(
    examples: tf.data.Dataset,
    batch: int,
    feature: tfds.features.Image,
    image_size: int,
    config: Mapping[str, Any],
) -> tf.data.Dataset:
    """``examples`` of ``transforms.train_transform`` in batches of ``batch`` (the remainder
    dropped). With ``config['on_device']`` each image is zero-padded at the bottom and right to
    the fixed ``transforms.device_canvas`` while it is copied into the batch (``padded_batch``: one
    copy; padding each image first would cost a second, about as long as decoding a crop)."""
    if not config["on_device"]:
        return examples.batch(batch, drop_remainder=True)
    canvas = transforms.device_canvas(feature, image_size, config)
    shapes = {"image": [*canvas, 3], "box": [4], "bilinear": [], "label": []}
    return examples.padded_batch(batch, padded_shapes=shapes, drop_remainder=True)


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
    """One deterministic pass over this process's part of ``split``.

    Yields ``{'image': float32 [b, S, S, 3], 'label': int32 [b], 'mask': bool [b]}``: shorter
    side resized (bicubic) to floor(S / crop_ratio), centre S x S crop. Every process yields the
    same number of batches (that of the largest part); the missing examples are zero images with
    mask False, so across processes every example of the split is counted exactly once.
    """
    batch = local_batch_size(global_batch_size, process_index, process_count)
    if not 0.0 < crop_ratio <= 1.0:
        raise ValueError(f"crop_ratio must be in (0, 1], got {crop_ratio}")
    builder = _prepared_builder(name, data_dir)
    feature = _image_feature(builder)
    parts = tfds.even_splits(split, n=process_count)
    counts = [builder.info.splits[p].num_examples for p in parts]
    num_batches = -(-max(counts) // batch)
    padding = num_batches * batch - counts[process_index]

    transform = transforms.eval_transform(feature, image_size, crop_ratio)
    ds = _raw_part(builder, parts[process_index]).map(
        transform, num_parallel_calls=tf.data.AUTOTUNE
    )
    filler = {
        "image": tf.zeros([image_size, image_size, 3], tf.float32),
        "label": tf.constant(0, tf.int32),
        "mask": tf.constant(False),
    }
    ds = ds.concatenate(tf.data.Dataset.from_tensors(filler).repeat(padding))
    ds = ds.batch(batch, drop_remainder=True).prefetch(2).with_options(options())
    return ds.as_numpy_iterator()
