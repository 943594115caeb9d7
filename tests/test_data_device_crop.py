"""RandomResizedCrop on the device (``augment['on_device']``): the host ships the decoded image on
a fixed canvas with the host route's crop box and interpolation, and the device's crop and resize
give the host route's pixels within one grey level.

Why one grey level: both resize with the same float32 kernel weights (TF's antialiased
``ScaleAndTranslate``), but XLA and TF may sum in another order, and a sum within an ulp of a .5
then rounds the other way; with bilinear's exact quarter weights such ties are common, so the
mean difference is bounded as well (measured: about 0.005 grey levels, bicubic mostly exact).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from imixer_jax import data
from imixer_jax.data import pipeline, transforms
from imixer_jax.data.augment import device as device_augment
from imixer_jax.data.augment import host as augment
from imixer_jax.data.defaults import augment_config

RNG = np.random.default_rng(0)
PLAIN = {"hflip": False, "randaugment": None, "random_erasing": 0.0}  # crop and resize only


def _smooth(height, width):
    """A smooth random uint8 image ``[height, width, 3]`` (JPEG keeps it nearly intact)."""
    coarse = RNG.uniform(0, 255, (4, 4, 3)).astype(np.float32)
    return np.asarray(tf.cast(tf.image.resize(coarse, (height, width)), tf.uint8))


def test_crop_resize_equals_tf_resize_of_the_crop():
    canvas, size, n = (24, 30), 16, 48
    images = np.stack([RNG.integers(0, 256, (*canvas, 3)) for _ in range(n // 2)])
    images = np.concatenate([images, [_smooth(*canvas) for _ in range(n // 2)]]).astype(np.uint8)
    extent = RNG.integers(1, np.array(canvas) + 1, (n, 2))  # shrink and enlarge, 1 px to all
    extent[:2] = [(24, 30), (1, 1)]
    start = RNG.integers(0, np.array(canvas) - extent + 1)
    boxes = np.concatenate([start, extent], 1).astype(np.int32)
    bilinear = np.arange(n) % 2 == 1
    run = jax.jit(jax.vmap(lambda x, b, f: device_augment.crop_resize(x, b, f, size, "random")))
    ours = np.asarray(run(images, boxes, bilinear)).astype(int)
    diffs = []
    for image, (top, left, h, w), use_bilinear, out in zip(images, boxes, bilinear, ours):
        method = "bilinear" if use_bilinear else "bicubic"
        theirs = augment.resize(image[top : top + h, left : left + w], (size, size), method)
        diffs.append(np.abs(out - np.asarray(theirs).astype(int)))
    diffs = np.stack(diffs)
    assert diffs.max() <= 1 and diffs.mean() < 0.02, (diffs.max(), diffs.mean())


def test_a_box_of_the_output_size_is_the_identity():
    image = jnp.asarray(RNG.integers(0, 256, (20, 20, 3)), jnp.uint8)
    for flag in (False, True):
        out = device_augment.crop_resize(image, jnp.asarray([0, 0, 8, 8]), flag, 8, "random")
        np.testing.assert_array_equal(out, image[:8, :8])


def _jpeg_records(sizes):
    encoded = [tf.io.encode_jpeg(_smooth(h, w), quality=95) for h, w in sizes]
    labels = tf.range(len(sizes), dtype=tf.int64)
    return tf.data.Dataset.from_tensor_slices({"image": encoded, "label": labels})


def _batch(records, feature, image_size, augment, count):
    """``count`` examples of ``records`` through the pipeline's transform and batching, seeds
    0..count-1: one numpy batch."""
    config = augment_config(augment)
    transform = transforms.train_transform(feature, image_size, config)
    ds = records.repeat().take(count).enumerate()
    ds = ds.map(lambda i, ex: transform(tf.stack([i, tf.constant(3, tf.int64)]), ex))
    return next(pipeline.train_batching(ds, count, feature, image_size, config).as_numpy_iterator())


@pytest.mark.parametrize("random_resized_crop", [True, False])
def test_variable_size_jpegs_travel_on_a_bounded_canvas(random_resized_crop):
    """Crops that fit ``CANVAS_SCALE * S`` are shipped as decoded (``decode_and_crop_jpeg``),
    larger ones resized to S on the host (box = the whole S x S); either way the device's result
    is the host route's within one grey level. Without RandomResizedCrop the host resizes and
    centre-crops and ships S x S."""
    feature = tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")
    records = _jpeg_records([(12, 20), (30, 18), (9, 9), (40, 44), (17, 16)])
    size, count = 8, 40
    canvas = (16, 16) if random_resized_crop else (8, 8)
    plain = {**PLAIN, "interpolation": "random", "random_resized_crop": random_resized_crop}
    shipped = _batch(records, feature, size, {**plain, "on_device": True}, count)
    assert shipped["image"].shape == (count, *canvas, 3) and shipped["image"].dtype == np.uint8
    whole = np.all(shipped["box"] == [0, 0, size, size], axis=1)
    if random_resized_crop:
        assert 0 < whole.sum() < count  # some crops resized on the host, most shipped as cut
        assert np.all(shipped["box"][:, :2] == 0) and np.all(shipped["box"][:, 2:] <= 16)
        assert 0 < shipped["bilinear"].sum() < count
    else:
        assert whole.all()
    host = _batch(records, feature, size, plain, count)
    config = {**data.AUGMENT_DEFAULTS, **plain, "on_device": True}
    crops = {k: shipped[k] for k in ("image", "box", "bilinear")}
    ours = jax.jit(lambda b: device_augment.augment_batch(jax.random.key(0), b, config, size))
    grey_levels = np.abs(np.asarray(ours(crops)) - host["image"]) * 127.5
    assert grey_levels.max() <= 1.0 + 1e-4 and grey_levels.mean() < 0.05
    np.testing.assert_array_equal(host["label"], shipped["label"])
