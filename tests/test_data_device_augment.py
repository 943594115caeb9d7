"""Augmentation on the device (``augment['on_device']``): every JAX op equals its TensorFlow twin,
every sampler draws from the TF sampler's distribution, and the batch function's contract.

The distribution tests compare N draws of each route with a two-sample test (chi-square on
counts, Kolmogorov-Smirnov on the magnitude) at level ALPHA = 1e-3: if the two samplers draw
from the same law, a given comparison fails for at most 1 in 1,000 seed choices (the seeds are
fixed, so the outcome is deterministic). Power at N = 4,000, simulated with numpy (200 repeats):
an op that is never drawn, an apply probability of 0.6 instead of 0.5, a magnitude std of 0.6
instead of 0.5 or a mean of 9.1 instead of 9 are each caught in >= 96% of seed choices.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from imixer_jax import data
from imixer_jax.data.augment import device as device_augment
from imixer_jax.data.augment import host as augment
from imixer_jax.data.augment.policy import RandAugmentPolicy
from tests.multidevice import run_on_eight_devices

ALPHA = 1e-3
N = 4000
GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
RNG = np.random.default_rng(0)
_yy, _xx = np.mgrid[0:12, 0:16]
IMAGES = np.stack(
    [
        RNG.integers(0, 256, (12, 16, 3)),  # noise
        np.stack([(_xx * 10) % 256, (_yy * 12) % 256, (_xx * _yy) % 256], -1),  # ramps
        RNG.integers(40, 90, (12, 16, 3)),  # narrow range: autocontrast stretches
        np.full((12, 16, 3), 77),  # flat: autocontrast / equalize leave it alone
        np.where(_xx[..., None] < 5, 10, 200) * np.ones(3, int),  # two levels
    ]
).astype(np.uint8)
MAGNITUDES = np.array([0.0, 3.3, 9.0, 10.0, 0.0, 3.3, 9.0, 10.0], np.float32)
NEGATES = np.array([False] * 4 + [True] * 4)
ON_DEVICE = {
    **data.AUGMENT_DEFAULTS,
    "on_device": True,
    "randaugment": None,
    "random_erasing": 0.0,
}


def _whole(images):
    """The ``on_device`` batch of uint8 ``images`` ``[B, S, S, 3]``, each its own crop box (the
    device's crop and resize are then the identity)."""
    b, size = images.shape[0], images.shape[1]
    box = jnp.broadcast_to(jnp.asarray([0, 0, size, size], jnp.int32), (b, 4))
    return {"image": images, "box": box, "bilinear": jnp.zeros(b, bool)}


@functools.cache
def _all_ops(transforms):
    """Jitted (images [I], magnitudes [K], negates [K]) -> every op of ``transforms`` through
    the RandAugment layer itself (traced op index), uint8 [I, len(transforms), K, H, W, 3]."""

    def one(image, op, magnitude, negate):
        return device_augment.apply_layer(image, op, True, magnitude, negate, transforms)

    over_args = jax.vmap(one, (None, None, 0, 0))
    over_ops = jax.vmap(over_args, (None, 0, None, None))
    over_images = jax.vmap(over_ops, (0, None, None, None))
    return jax.jit(lambda i, m, n: over_images(i, jnp.arange(len(transforms)), m, n))


@pytest.mark.parametrize(
    "transforms", [augment.RAND_TRANSFORMS, augment.RAND_INCREASING_TRANSFORMS], ids=["", "inc"]
)
def test_every_op_equals_its_tf_twin(transforms):
    ours = np.asarray(_all_ops(transforms)(IMAGES, MAGNITUDES, NEGATES)).astype(int)
    for i, image in enumerate(IMAGES):
        for j, name in enumerate(transforms):
            for k, (magnitude, negate) in enumerate(zip(MAGNITUDES, NEGATES, strict=True)):
                theirs = augment.apply_op(name, tf.constant(image), magnitude, negate)
                diff = np.abs(ours[i, j, k] - np.asarray(theirs).astype(int))
                where = (i, name, float(magnitude), bool(negate))
                if name in GEOMETRIC:
                    # Same coordinates and bilinear weights in float32, but XLA and TF may
                    # round the products and cos/sin differently in the last bit: a value at
                    # .5 may round either way, hence one grey level, rarely.
                    assert diff.max() <= 1 and diff.mean() < 0.05, where
                else:  # integer tables or the same float32 expression: exact
                    assert diff.max() == 0, where


def test_a_layer_that_is_not_applied_leaves_the_image_alone():
    transforms = augment.RAND_INCREASING_TRANSFORMS
    layer = jax.jit(
        jax.vmap(
            lambda op: device_augment.apply_layer(
                IMAGES[0], op, False, jnp.float32(9.0), True, transforms
            )
        )
    )
    out = np.asarray(layer(jnp.arange(len(transforms))))
    np.testing.assert_array_equal(out, np.broadcast_to(IMAGES[0], out.shape))


def test_autocontrast_follows_pils_float64_rounding():
    """PIL computes ``int(v * s - lo * s)`` in float64; where the exact quotient is an integer
    that can land one below it (e.g. lo 0, hi 25: 25 -> 254). Every value of each channel's
    [lo, hi] is present, over pairs that include such cases."""
    pairs = [(0, 25), (0, 29), (0, 105), (3, 200), (0, 255), (17, 18)]
    pairs += [tuple(sorted(RNG.choice(256, 2, replace=False))) for _ in range(26)]
    images = []
    for lo, hi in pairs:
        values = np.resize(np.arange(lo, hi + 1), 256).reshape(16, 16)
        images.append(np.stack([values, values[::-1], np.full_like(values, lo)], -1))
    images = np.array(images, np.uint8)
    ours = jax.jit(jax.vmap(lambda x: device_augment.apply_op("AutoContrast", x, 0.0, False)))
    ours = np.asarray(ours(images))
    for image, out in zip(images, ours, strict=True):
        np.testing.assert_array_equal(out, np.asarray(augment.auto_contrast(image)))


def _same_law(a, b) -> float:
    """p-value of a chi-square test that integer samples ``a`` and ``b`` share one law;
    values seen fewer than 20 times in both together are pooled (expected counts >= 5)."""
    values, counts = np.unique(np.concatenate([a, b]), return_counts=True)
    rare = values[counts < 20]
    a = np.where(np.isin(a, rare), -1, a)
    b = np.where(np.isin(b, rare), -1, b)
    values = np.unique(np.concatenate([a, b]))
    table = np.array([[np.sum(x == v) for v in values] for x in (a, b)])
    return stats.chi2_contingency(table).pvalue


def _tf_map(fn, num, signature):
    """``fn`` of N stateless seeds (tf.function + map_fn): numpy outputs."""
    seeds = tf.stack([tf.range(num, dtype=tf.int64), tf.fill([num], tf.constant(7, tf.int64))], 1)
    mapped = tf.function(lambda s: tf.map_fn(fn, s, fn_output_signature=signature))
    return tf.nest.map_structure(np.asarray, mapped(seeds))


def _keys(num, seed=1):
    return jax.random.split(jax.random.key(seed), num)


@pytest.mark.parametrize("spec", ["rand-m9-mstd0.5-inc1", "rand-m7-mstd101"])
def test_randaugment_draws_match_the_tf_sampler(spec):
    tf_policy = augment.RandAugment.from_string(spec)
    signature = (tf.int32, tf.bool, tf.float32, tf.bool)
    theirs = _tf_map(tf_policy.sample_layer, N, signature)
    policy = RandAugmentPolicy.from_string(spec)
    ours = jax.jit(jax.vmap(lambda k: device_augment.sample_layer(k, policy)))(_keys(N))
    ours = [np.asarray(x) for x in ours]
    n_ops = len(policy.transforms)
    assert ours[0].min() >= 0 and ours[0].max() < n_ops
    drawn = [np.where(apply, op, n_ops) for op, apply, *_ in (theirs, ours)]  # n_ops = skipped
    assert _same_law(*drawn) > ALPHA
    assert _same_law(theirs[3], ours[3]) > ALPHA  # sign
    assert stats.ks_2samp(theirs[2], ours[2]).pvalue > ALPHA  # magnitude, atoms at 0 and 10
    assert ours[2].min() >= 0.0 and ours[2].max() <= policy.magnitude_max


def test_flip_is_a_fair_coin_as_on_the_host():
    image = tf.constant([[[0], [255]]], tf.uint8)  # [1, 2, 1]: flipped iff it starts at 255
    theirs = _tf_map(
        lambda s: tf.image.stateless_random_flip_left_right(image, s)[0, 0, 0], N, tf.uint8
    )
    images = jnp.broadcast_to(jnp.asarray([[[0] * 3, [255] * 3]], jnp.uint8), (N, 2, 2, 3))
    # Jitted: one compilation instead of op-by-op dispatch (the same draws).
    ours = jax.jit(lambda k, x: device_augment.augment_batch(k, _whole(x), ON_DEVICE, 2))(
        jax.random.key(3), images
    )
    ours = np.asarray(ours[:, 0, 0, 0] > 0).astype(int)
    assert 0.45 < ours.mean() < 0.55
    assert _same_law((theirs > 0).astype(int), ours) > ALPHA


def _box_stats(erased):
    """(erased?, top, left, height, width) of boolean masks [N, H, W]; -1 where not erased."""
    rows, cols = erased.any(2), erased.any(1)
    hit = rows.any(1)
    top = np.where(hit, rows.argmax(1), -1)
    left = np.where(hit, cols.argmax(1), -1)
    return hit.astype(int), top, left, rows.sum(1) - 1 + hit, cols.sum(1) - 1 + hit


def test_erasing_box_matches_the_tf_sampler():
    flat = tf.fill([12, 16, 3], 100.0)  # N(0, 1) noise never lands on 100
    theirs = _tf_map(lambda s: augment.random_erasing(flat, s, 0.5)[..., 0] != 100.0, N, tf.bool)
    boxes = jax.jit(jax.vmap(lambda k: device_augment.erasing_box(k, 12, 16, 0.5)[0]))(
        _keys(N, 5)
    )  # jitted: one compilation instead of op-by-op dispatch (the same draws)
    for name, t, o in zip(
        ("erased", "top", "left", "height", "width"),
        _box_stats(theirs),
        _box_stats(np.asarray(boxes)),
        strict=True,
    ):
        assert _same_law(t, o) > ALPHA, name


def test_erasing_fills_the_box_with_standard_normal_noise():
    image = jnp.full((64, 64, 3), 3.0)
    erase = jax.jit(lambda x, k: device_augment.random_erasing(x, k, 1.0))  # one compilation
    out = np.asarray(erase(image, jax.random.key(0)))
    noise = out[out != 3.0]
    assert noise.size > 0.02 * out.size
    # Mean and std of >= 245 N(0, 1) draws: 5 standard errors (0.32, 0.23) would be exceeded
    # with probability < 1e-5.
    assert abs(noise.mean()) < 0.35 and abs(noise.std() - 1.0) < 0.25


def test_augment_batch_is_a_function_of_key_and_example_index():
    images = jnp.asarray(np.stack([IMAGES[1][:, :12]] * 64))  # [64, 12, 12, 3], all equal
    run = jax.jit(lambda key, x: device_augment.augment_batch(key, _whole(x), ON_DEVICE, 12))
    out = np.asarray(run(jax.random.key(0), images))  # flip only
    assert out.shape == (64, 12, 12, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out, run(jax.random.key(0), images))
    assert not np.array_equal(out, run(jax.random.key(1), images))
    flipped = np.all(out == out[:, :, ::-1][0:1], axis=(1, 2, 3))  # example i: its own coin
    assert 0 < flipped.sum() < 64
    # Without random ops only the normalisation is left: x / 127.5 - 1, exactly as on the host.
    plain = {**ON_DEVICE, "hflip": False}
    key = jax.random.key(0)
    out = jax.jit(lambda x: device_augment.augment_batch(key, _whole(x), plain, 12))(images)
    np.testing.assert_array_equal(out, np.asarray(images, np.float32) / np.float32(127.5) - 1)


def test_the_train_step_hook_is_the_identity_unless_on_device():
    images = jnp.zeros((2, 4, 4, 3), jnp.float32)
    batch = {"image": images, "label": jnp.zeros(2, jnp.int32)}
    key = jax.random.key(0)
    assert data.augment_on_device(key, batch, data.AUGMENT_DEFAULTS, 4) is images
    with pytest.raises(TypeError, match="augment.on_device needs uint8 images with their crop"):
        data.augment_on_device(key, batch, ON_DEVICE, 4)
    with pytest.raises(TypeError, match=r"keys \['image', 'label'\]"):  # no box
        data.augment_on_device(key, {**batch, "image": images.astype(jnp.uint8)}, ON_DEVICE, 4)


def test_synthetic_source_ships_uint8_with_on_device():
    kwargs = dict(name="synthetic/3", data_dir=None, split="train", image_size=8)
    kwargs.update(global_batch_size=4, seed=0, start_step=0, process_index=0, process_count=1)
    batch = next(data.train_batches(**kwargs, augment={"on_device": True}))
    assert batch["image"].dtype == np.uint8 and batch["image"].shape == (4, 8, 8, 3)
    np.testing.assert_array_equal(batch["box"], [[0, 0, 8, 8]] * 4)  # the whole image
    assert batch["bilinear"].dtype == bool and not batch["bilinear"].any()
    assert next(data.train_batches(**kwargs, augment={}))["image"].dtype == np.float32


def test_tfds_pipeline_on_device_crops_as_the_host_route(tmp_path):
    kwargs = dict(name="digits", data_dir=str(tmp_path), split="train", image_size=16)
    kwargs.update(global_batch_size=8, seed=0, start_step=3, process_index=0, process_count=1)
    # 'random': both kernels, bilinear where the host route's coin says so
    plain = {"hflip": False, "randaugment": None, "random_erasing": 0.0, "interpolation": "random"}
    raw = next(data.train_batches(**kwargs, augment={**plain, "on_device": True}))
    assert raw["image"].dtype == np.uint8 and raw["image"].shape == (8, 8, 8, 3)  # as stored
    assert raw["box"].shape == (8, 4) and 0 < raw["bilinear"].sum() < 8
    # The same box and interpolation (same seeds) as the host route, cropped and resized on
    # the device: the host's pixels within one grey level (see augment.device.crop).
    host = next(data.train_batches(**kwargs, augment=plain))
    config = {**data.AUGMENT_DEFAULTS, **plain, "on_device": True}
    shipped = {k: raw[k] for k in ("image", "box", "bilinear")}
    ours = jax.jit(lambda b: device_augment.augment_batch(jax.random.key(0), b, config, 16))(
        shipped
    )
    grey_levels = np.abs(np.asarray(ours) - host["image"]) * 127.5
    assert grey_levels.max() <= 1.0 + 1e-4 and grey_levels.mean() < 0.05
    np.testing.assert_array_equal(host["label"], raw["label"])


SHARDED_SCRIPT = """
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from imixer_jax import data
from imixer_jax.data.augment import device as device_augment
config = {**data.AUGMENT_DEFAULTS, "on_device": True, "interpolation": "random"}
rng = np.random.default_rng(0)
size = rng.integers(1, 13, (16, 2))
batch = {
    "image": rng.integers(0, 256, (16, 12, 12, 3), dtype=np.uint8),
    "box": np.concatenate([rng.integers(0, 13 - size), size], 1).astype(np.int32),
    "bilinear": rng.random(16) < 0.5,
}
run = jax.jit(lambda k, b: device_augment.augment_batch(k, b, config, 10))
one = np.asarray(run(jax.random.key(0), batch))
assert one.shape == (16, 10, 10, 3) and one.dtype == np.float32 and np.isfinite(one).all()
assert not np.array_equal(one, run(jax.random.key(1), batch))
mesh = Mesh(np.array(jax.devices()), ("data",))
sharded = jax.device_put(batch, NamedSharding(mesh, P("data")))
assert len(jax.devices()) == 8
np.testing.assert_array_equal(one, np.asarray(run(jax.random.key(0), sharded)))
print("OK")
"""


@pytest.mark.slow
def test_full_recipe_same_on_one_device_and_sharded_over_eight():
    result = run_on_eight_devices(SHARDED_SCRIPT)
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-3000:]


@pytest.mark.slow
def test_trainer_runs_with_on_device_augmentation_on_synthetic_data(tmp_path):
    from configs import default
    from imixer_jax import training
    from imixer_jax.training import config as config_lib

    c = default.get_config()
    tiny = dict(img_size=16, patch_size=4, num_blocks=1, hidden_dim=16, tokens_mlp_dim=8)
    c.model = config_lib.model_section("imixer_s16", num_classes=10, channels_mlp_dim=32, **tiny)
    c.data.name = "synthetic/10"
    c.data.augment.on_device = True
    c.data.augment.randaugment = "rand-n1-m9-mstd0.5-inc1"  # one layer: half the compile time
    c.batch_size, c.eval_batch_size = 8, 50_000
    c.schedule.unit, c.schedule.length, c.schedule.warmup = "steps", 2.0, 1.0
    c.log_every_steps, c.eval_every_steps, c.checkpoint.every_steps = 1, 2, 2
    result = training.train_and_evaluate(c, str(tmp_path / "run"))
    assert result["step"] == 2 and np.isfinite(result["train/loss"])
