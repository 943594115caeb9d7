r"""Throughput of the training input pipeline's per-example work, in images/s per CPU core.

    python -m benchmarks.throughput --threads 1,2 --image_size 224 [--mock jpeg] [--on_device]

Measures what ``train_batches`` does to every example for the full paper recipe
(``AUGMENT_DEFAULTS``): decode, RandomResizedCrop, bicubic resize to S x S, flip, RandAugment
``rand-m9-mstd0.5-inc1``, normalisation, random erasing 0.25, batching; mixup/cutmix run on the
accelerator and are excluded. The examples are ``--num_examples`` records held in memory, so file
reading and shuffling (cheap next to augmentation) are left out and nothing is downloaded:
``--mock cifar10`` (default) cifar10-shaped records (32 x 32 PNG) made by
``tfds.testing.mock_data``; ``--mock jpeg`` ImageNet-sized JPEGs (``mock_jpeg``: 250-450 x
300-500 px, quality 90, about 90 KB each, ImageNet's train images average about 110 KB at
about 400 x 350), with photo-like content, since the decode's cost grows with the entropy.

For each thread count T the transform runs on a private tf.data pool of T threads (T parallel
calls, one thread per op, as the pipeline runs). Reported per T: images/s of wall time, and
images per second of this process's CPU time (``time.process_time``), which is what one core
delivers and is insensitive to other load on the machine. ``cores per accelerator`` divides an
accelerator's step rate (``--step_rate``, images/s) by the per-core rate.

``--on_device`` measures the route of ``augment['on_device']``: the host only decodes (a JPEG:
the crop alone), draws the crop box and the interpolation and pads onto the canvas
(``transforms.device_canvas``); crop, resize, flip, RandAugment, normalisation and erasing run in
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
    "num_batches", 8, "timed batches per measurement", flag_values=FLAGS
)
_REPEATS = flags.DEFINE_integer(
    "repeats", 3, "measurements per thread count (median reported)", flag_values=FLAGS
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
    "host decodes and draws the crop only; also time the device augmentation",
    flag_values=FLAGS,
)
_MOCK = flags.DEFINE_enum(
    "mock",
    "cifar10",
    ["cifar10", "jpeg"],
    "cifar10-shaped PNGs or ImageNet-sized JPEGs",
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


def _photo(rng: np.random.Generator, height: int, width: int) -> tf.Tensor:
    """A photo-like uint8 ``[height, width, 3]`` image: a smooth colour field, texture at an
    eighth of the resolution and pixel noise (JPEG sizes like ImageNet's photos; pure noise
    would compress far worse, a flat field far better)."""
    tf = tf_import.import_tensorflow()
    field = tf.image.resize(rng.uniform(0, 255, (6, 6, 3)), (height, width), "bicubic")
    texture = tf.image.resize(rng.normal(0, 40, (height // 8, width // 8, 3)), (height, width))
    image = field + texture + rng.normal(0, 32, (height, width, 3))
    return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)


def mock_jpeg(num_examples: int) -> tuple[tfds.features.Image, tf.data.Dataset]:
    """A variable-size JPEG image feature (as imagenet2012's) and ``num_examples`` records
    ``{'image': JPEG bytes, 'label'}`` of ImageNet-sized photo-like images (height 250-450,
    width 300-500 px, quality 90), made with numpy from a fixed seed and held in memory."""
    tf = tf_import.import_tensorflow()
    import tensorflow_datasets as tfds

    rng = np.random.default_rng(0)
    encoded = [
        tf.io.encode_jpeg(_photo(rng, *rng.integers((250, 300), (451, 501))), quality=90)
        for _ in range(num_examples)
    ]
    feature = tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")
    labels = tf.constant(rng.integers(0, 1000, num_examples))
    return feature, tf.data.Dataset.from_tensor_slices({"image": encoded, "label": labels})


def augmented_batches(
    feature: tfds.features.Image,
    records: tf.data.Dataset,
    *,
    image_size: int,
    batch_size: int,
    threads: int,
    augment: Mapping[str, Any],
) -> tf.data.Dataset:
    """The pipeline's training transform and batching (``augment`` overriding
    ``AUGMENT_DEFAULTS``) over ``records`` repeated, on ``threads`` tf.data threads: batches
    ``{'image': float32 [B, S, S, 3], 'label'}`` (``on_device``: the pipeline's uint8 canvases
    with ``'box'`` and ``'bilinear'``)."""
    tf = tf_import.import_tensorflow()
    from imixer_jax.data import pipeline, transforms

    config = augment_config(augment)
    transform = transforms.train_transform(feature, image_size, config)
    seed = tf.constant([0, 0], tf.int64)
    ds = records.repeat().enumerate()
    ds = ds.map(
        lambda i, ex: transform(tf.random.experimental.stateless_fold_in(seed, i), ex),
        num_parallel_calls=threads,
    )
    ds = pipeline.train_batching(ds, batch_size, feature, image_size, config)
    return ds.prefetch(2).with_options(pipeline.options(threads))


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
    batch: Mapping[str, np.ndarray], augment: Mapping[str, Any], image_size: int, repeats: int
) -> tuple[float, float, str]:
    """(wall ms per image, process CPU ms per image, device) of the jitted device augmentation
    (``augment`` with ``on_device``: crop, resize to ``image_size``, flip, RandAugment,
    normalisation, erasing) of the pipeline's ``on_device`` batch, the mean of ``repeats`` calls
    with fresh keys after a compiling call."""
    config = augment_config({**augment, "on_device": True})
    run = jax.jit(lambda key, b: device_augment.augment_batch(key, b, config, image_size))
    batch = jax.device_put({k: batch[k] for k in ("image", "box", "bilinear")})
    run(jax.random.key(0), batch).block_until_ready()
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(repeats):
        run(jax.random.key(i + 1), batch).block_until_ready()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    count = repeats * batch["image"].shape[0]
    return 1e3 * wall / count, 1e3 * cpu / count, str(batch["image"].devices().pop())


def main() -> None:
    try:
        augment = json.loads(_AUGMENT.value)
    except json.JSONDecodeError as e:
        raise cli.UsageError(f"--augment is not JSON ({e}); see --help") from e
    rates = [float(r) for r in _STEP_RATES.value]
    tf_import.import_tensorflow().config.set_visible_devices([], "GPU")
    mock = {"cifar10": mock_cifar10, "jpeg": mock_jpeg}[_MOCK.value]
    feature, records = mock(_EXAMPLES.value)
    if _ON_DEVICE.value:
        augment["on_device"] = True
    route = "host decode + crop draws only (on_device)" if _ON_DEVICE.value else "all on the host"
    examples = {"cifar10": "cifar10-shaped mock PNGs", "jpeg": "ImageNet-sized mock JPEGs"}
    print(
        f"paper recipe (overrides {augment}; {route}) at {_IMAGE_SIZE.value} px, batch "
        f"{_BATCH.value}, median of {_REPEATS.value} x {_BATCHES.value} timed batches, "
        f"{examples[_MOCK.value]}"
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
        runs = [measure(batches, _BATCHES.value, _BATCH.value) for _ in range(_REPEATS.value)]
        wall_rate, cpu_rate = (float(np.median(r)) for r in zip(*runs, strict=True))
        cores = ", ".join(f"{math.ceil(r / cpu_rate)} at {r:,.0f} img/s" for r in rates)
        low, high = min(r[1] for r in runs), max(r[1] for r in runs)
        print(
            f"threads {threads}: {wall_rate:,.1f} img/s wall ({wall_rate / threads:,.1f} per "
            f"thread), {cpu_rate:,.1f} img/s per CPU-second (runs {low:,.0f}-{high:,.0f}); "
            f"cores per accelerator: {cores}"
        )
    if _ON_DEVICE.value:
        batch = next(batches.as_numpy_iterator())
        wall_ms, cpu_ms, device = device_augment_cost(
            batch, augment, _IMAGE_SIZE.value, _BATCHES.value
        )
        print(
            f"device augmentation (crop + resize from {batch['image'].shape[1:3]} canvases, "
            f"flip, RandAugment, normalise, erase) on {device}: {wall_ms:,.2f} ms per image "
            f"wall, {cpu_ms:,.2f} ms per image of process CPU time (jitted batch of "
            f"{batch['image'].shape[0]})"
        )
    logging.flush()


if __name__ == "__main__":
    cli.run(main, FLAGS)
