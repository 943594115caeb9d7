r"""Throughput of the training input pipeline's per-example work, in images/s per CPU core.

    python -m benchmarks.throughput --threads 1,2 --image_size 224

Measures what ``train_batches`` does to every example for the full paper recipe
(``AUGMENT_DEFAULTS``): decode, RandomResizedCrop, bicubic resize to S x S, flip, RandAugment
``rand-m9-mstd0.5-inc1``, normalisation, random erasing 0.25, batching; mixup/cutmix run on the
accelerator and are excluded. The examples are ``--num_examples`` cifar10-shaped records (32 x 32
PNG) made by ``tfds.testing.mock_data`` and held in memory, so file reading and shuffling (cheap
next to augmentation) are left out and nothing is downloaded; ImageNet's JPEG decode (a few
ms per image) would come on top.

For each thread count T the transform runs on a private tf.data pool of T threads (T parallel
calls, one thread per op, as the pipeline runs). Reported per T: images/s of wall time, and
images per second of this process's CPU time (``time.process_time``), which is what one core
delivers and is insensitive to other load on the machine. ``cores per accelerator`` divides an
accelerator's step rate (``--step_rate``, images/s) by the per-core rate.

``--on_device`` measures the route of ``augment['on_device']``: the host does only decode,
RandomResizedCrop and resize (uint8), and flip, RandAugment, normalisation and erasing run in
JAX on the accelerator (``imixer_jax.data.augment.device``). The host rates above then refer to
that lighter transform, and one jitted call of the device augmentation on a batch is timed on
this process's default JAX device (compile excluded), reported in ms per image.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from absl import flags, logging

from imixer_jax import cli
from imixer_jax.data import tf_import
from imixer_jax.data.augment import device as device_augment
from imixer_jax.data.defaults import augment_config

if TYPE_CHECKING:  # imported in the functions: the tool's --help and flag errors need no TF
    import tensorflow as tf
    import tensorflow_datasets as tfds

FLAGS = cli.flag_values()
_THREADS = flags.DEFINE_list(
    "threads", ["1", "2"], "tf.data thread counts to measure", flag_values=FLAGS
)
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "training image size S", flag_values=FLAGS)
_BATCH = flags.DEFINE_integer("batch_size", 64, "images per batch", flag_values=FLAGS)
_BATCHES = flags.DEFINE_integer(
    "num_batches", 8, "timed batches per thread count", flag_values=FLAGS
)
_EXAMPLES = flags.DEFINE_integer(
    "num_examples", 256, "distinct mock examples held in memory", flag_values=FLAGS
)
_AUGMENT = flags.DEFINE_string(
    "augment",
    "{}",
    "JSON overrides of AUGMENT_DEFAULTS, e.g. '{\"randaugment\": null}'",
    flag_values=FLAGS,
)
_ON_DEVICE = flags.DEFINE_bool(
    "on_device",
    False,
    "host does crop + resize only; also time the JAX device augmentation",
    flag_values=FLAGS,
)
_STEP_RATES = flags.DEFINE_list(
    "step_rate", ["3800", "6600"], "accelerator train-step rates (img/s) to feed", flag_values=FLAGS
)


def mock_cifar10(num_examples: int) -> tuple[tfds.features.Image, tf.data.Dataset]:
    """cifar10's image feature and ``num_examples`` mock records ``{'image': PNG bytes,
    'label'}`` made by ``tfds.testing.mock_data``, cached in memory."""
    tf = tf_import.import_tensorflow()
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=num_examples):
        builder = tfds.builder("cifar10")
        raw = builder.as_dataset(
            split="train", shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
        )
        records = list(raw.take(num_examples).as_numpy_iterator())
    feature = builder.info.features["image"]
    images = tf.constant([r["image"] for r in records])
    labels = tf.constant([r["label"] for r in records])
    return feature, tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})


def augmented_batches(
    feature: tfds.features.Image,
    records: tf.data.Dataset,
    *,
    image_size: int,
    batch_size: int,
    threads: int,
    augment: Mapping[str, Any],
) -> tf.data.Dataset:
    """The pipeline's training transform (``augment`` overriding ``AUGMENT_DEFAULTS``) over
    ``records`` repeated, on ``threads`` tf.data threads: batches ``{'image': float32
    [B, S, S, 3], 'label'}``."""
    tf = tf_import.import_tensorflow()
    from imixer_jax.data import pipeline, transforms

    transform = transforms.train_transform(feature, image_size, augment_config(augment))
    seed = tf.constant([0, 0], tf.int64)
    ds = records.repeat().enumerate()
    ds = ds.map(
        lambda i, ex: transform(tf.random.experimental.stateless_fold_in(seed, i), ex),
        num_parallel_calls=threads,
    )
    return (
        ds.batch(batch_size, drop_remainder=True)
        .prefetch(2)
        .with_options(pipeline.options(threads))
    )


def measure(batches: tf.data.Dataset, num_batches: int, batch_size: int) -> tuple[float, float]:
    """(images/s of wall time, images/s of process CPU time) over ``num_batches`` batches,
    after two warm-up batches (graph tracing, pool start)."""
    iterator = iter(batches)
    for _ in range(2):
        next(iterator)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(num_batches):
        next(iterator)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    images = num_batches * batch_size
    return images / wall, images / cpu


def device_augment_cost(
    images: np.ndarray, augment: Mapping[str, Any], repeats: int
) -> tuple[float, float, str]:
    """(wall ms per image, process CPU ms per image, device) of the jitted device augmentation
    (``augment`` with ``on_device``) of the uint8 batch ``images`` ``[B, S, S, 3]``, the mean of
    ``repeats`` calls with fresh keys after a compiling call."""
    config = augment_config({**augment, "on_device": True})
    run = jax.jit(lambda key, x: device_augment.augment_batch(key, x, config))
    batch = jax.device_put(images)
    run(jax.random.key(0), batch).block_until_ready()
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(repeats):
        run(jax.random.key(i + 1), batch).block_until_ready()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    count = repeats * images.shape[0]
    return 1e3 * wall / count, 1e3 * cpu / count, str(batch.devices().pop())


def main() -> None:
    try:
        augment = json.loads(_AUGMENT.value)
    except json.JSONDecodeError as e:
        raise cli.UsageError(f"--augment is not JSON ({e}); see --help") from e
    rates = [float(r) for r in _STEP_RATES.value]
    tf_import.import_tensorflow().config.set_visible_devices([], "GPU")
    feature, records = mock_cifar10(_EXAMPLES.value)
    if _ON_DEVICE.value:
        augment["on_device"] = True
    route = "host crop + resize only (on_device)" if _ON_DEVICE.value else "all on the host"
    print(
        f"paper recipe (overrides {augment}; {route}) at {_IMAGE_SIZE.value} px, batch "
        f"{_BATCH.value}, {_BATCHES.value} timed batches, cifar10-shaped mock PNGs"
    )
    for threads in (int(t) for t in _THREADS.value):
        batches = augmented_batches(
            feature,
            records,
            image_size=_IMAGE_SIZE.value,
            batch_size=_BATCH.value,
            threads=threads,
            augment=augment,
        )
        wall_rate, cpu_rate = measure(batches, _BATCHES.value, _BATCH.value)
        cores = ", ".join(f"{math.ceil(r / cpu_rate)} at {r:,.0f} img/s" for r in rates)
        print(
            f"threads {threads}: {wall_rate:,.1f} img/s wall ({wall_rate / threads:,.1f} per "
            f"thread), {cpu_rate:,.1f} img/s per CPU-second; cores per accelerator: {cores}"
        )
    if _ON_DEVICE.value:
        images = next(iter(batches))["image"].numpy()
        wall_ms, cpu_ms, device = device_augment_cost(images, augment, _BATCHES.value)
        print(
            f"device augmentation (flip, RandAugment, normalise, erase) on {device}: "
            f"{wall_ms:,.2f} ms per image wall, {cpu_ms:,.2f} ms per image of process CPU time "
            f"(jitted batch of {images.shape[0]})"
        )
    logging.flush()


if __name__ == "__main__":
    cli.run(main, FLAGS)
