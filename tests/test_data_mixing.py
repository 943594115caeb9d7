"""mix_batch: timm Mixup/CutMix ('batch' mode) with label smoothing, on device."""

import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imixer_jax.data import mix_batch
from tests.multidevice import run_on_eight_devices

B, H, W, C, K = 8, 12, 10, 3, 10
SMOOTHING = 0.1
OFF = SMOOTHING / K  # timm: off = eps / K, on = 1 - eps + eps / K
ON = 1.0 - SMOOTHING + OFF
# All labels differ from their partner's (labels[i] != labels[B - 1 - i]), so lambda can be read
# off the soft targets.
LABELS = jnp.array([0, 1, 2, 3, 4, 5, 6, 7], jnp.int32)
# Distinct pixel values per example: partner pixels always differ from own pixels.
IMAGES = jnp.arange(B, dtype=jnp.float32)[:, None, None, None] + jnp.linspace(
    0.0, 0.5, H * W * C
).reshape(1, H, W, C)


_MIX = jax.jit(
    mix_batch,
    static_argnames=(
        "num_classes",
        "mixup_alpha",
        "cutmix_alpha",
        "switch_prob",
        "label_smoothing",
    ),
)


def _mix(key, images=IMAGES, labels=LABELS, **kwargs):
    params = {
        "num_classes": K,
        "mixup_alpha": 0.8,
        "cutmix_alpha": 1.0,
        "switch_prob": 0.5,
        "label_smoothing": SMOOTHING,
    }
    params.update(kwargs)
    return _MIX(key, images, labels, **params)


def _lam(targets):
    """lambda from target[i, label_i] = lam * ON + (1 - lam) * OFF."""
    own = targets[jnp.arange(B), LABELS]
    return (own - OFF) / (ON - OFF)


def test_smoothing_only_when_mixing_is_off():
    images, targets = _mix(jax.random.key(0), mixup_alpha=0.0, cutmix_alpha=0.0)
    np.testing.assert_array_equal(images, IMAGES)
    expected = np.full((B, K), OFF, np.float32)
    expected[np.arange(B), np.asarray(LABELS)] = ON
    # off + (on - off) * 1 in float32: within an ulp of float32(on).
    np.testing.assert_allclose(targets, expected, rtol=0, atol=1e-7)
    assert np.isclose(ON, 0.91) and np.isclose(OFF, 0.01)


@pytest.mark.parametrize("seed", range(6))
def test_targets_are_distributions_mixed_with_the_flipped_batch(seed):
    images, targets = _mix(jax.random.key(seed))
    chex.assert_shape(targets, (B, K))
    chex.assert_type(targets, jnp.float32)
    chex.assert_shape(images, IMAGES.shape)
    # float32 sums of 10 terms <= 1: a few ulp.
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-6)
    lam = _lam(targets)
    np.testing.assert_allclose(lam, lam[0], atol=1e-6)  # one lambda for the batch
    partner = targets[jnp.arange(B), LABELS[::-1]]
    np.testing.assert_allclose(partner, (1 - lam) * ON + lam * OFF, atol=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_mixup_images_are_the_lambda_blend(seed):
    images, targets = _mix(jax.random.key(seed), cutmix_alpha=0.0)
    lam = float(_lam(targets)[0])
    assert 0.0 <= lam <= 1.0
    # lam read back from targets carries ~1e-7 relative error; pixels are < 8: 1e-5 absolute.
    np.testing.assert_allclose(images, lam * IMAGES + (1 - lam) * IMAGES[::-1], atol=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_cutmix_pastes_one_box_and_lambda_is_its_area(seed):
    images, targets = _mix(jax.random.key(seed), mixup_alpha=0.0)
    from_partner = np.asarray(images == IMAGES[::-1])
    np.testing.assert_array_equal(from_partner | np.asarray(images == IMAGES), True)
    box = from_partner[0, :, :, 0]
    assert (from_partner == box[None, :, :, None]).all()  # same box for every example/channel
    if box.any():
        rows, cols = np.nonzero(box)
        assert box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
    # Corrected lambda: 1 - box area / image area, exactly representable steps of 1/120.
    np.testing.assert_allclose(_lam(targets), 1.0 - box.mean(), atol=1e-6)


def test_switch_prob_chooses_between_cutmix_and_mixup():
    keys = jax.random.split(jax.random.key(1), 16)

    def is_cutmix(images):  # cutmix pixels are copies; mixup pixels are blends
        return bool(np.all((images == IMAGES) | (images == IMAGES[::-1])))

    kinds = [is_cutmix(_mix(k)[0]) for k in keys]
    assert 0 < sum(kinds) < len(kinds)  # P(all 16 the same) = 2 * 0.5^16
    # switch_prob only enters a comparison, so it may be traced: both extremes run through one
    # compiled function instead of one compilation each.
    mix = jax.jit(
        lambda key, p: mix_batch(
            key,
            IMAGES,
            LABELS,
            num_classes=K,
            mixup_alpha=0.8,
            cutmix_alpha=1.0,
            switch_prob=p,
            label_smoothing=SMOOTHING,
        )
    )
    assert all(is_cutmix(mix(k, 1.0)[0]) for k in keys[:4])
    assert not any(is_cutmix(mix(k, 0.0)[0]) for k in keys[:4])


def test_lambda_distribution_is_beta():
    keys = jax.random.split(jax.random.key(2), 400)
    # One key at a time: the mixup-only function the blend test compiled, not a batched one.
    lams = np.array([_lam(_mix(k, cutmix_alpha=0.0)[1])[0] for k in keys])
    # Beta(0.8, 0.8): mean 0.5, variance 1 / 10.4 (std 0.31); 400 samples: the sample mean is
    # within 0.06 (~4 standard errors) and the std within 0.05 of the truth.
    assert abs(float(lams.mean()) - 0.5) < 0.06
    assert abs(float(lams.std()) - (1 / 10.4) ** 0.5) < 0.05


def test_keeps_dtype_of_images():
    images, targets = _mix(jax.random.key(0), images=IMAGES.astype(jnp.bfloat16))
    assert images.dtype == jnp.bfloat16 and targets.dtype == jnp.float32


SHARDED_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from functools import partial
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from imixer_jax.data import mix_batch

    assert jax.device_count() == 8, jax.devices()
    mix = partial(mix_batch, num_classes=10, mixup_alpha=0.8, cutmix_alpha=1.0,
                  switch_prob=0.5, label_smoothing=0.1)
    images = jax.random.normal(jax.random.key(0), (16, 12, 10, 3))
    labels = jax.random.randint(jax.random.key(1), (16,), 0, 10)
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    sharding = NamedSharding(mesh, P("batch"))
    one_device = jax.devices()[0]
    mix = jax.jit(mix)
    kinds = set()
    for seed in range(16):
        key = jax.random.key(seed)
        ref = mix(key, jax.device_put(images, one_device), jax.device_put(labels, one_device))
        out = mix(key, jax.device_put(images, sharding), jax.device_put(labels, sharding))
        assert out[0].sharding.is_equivalent_to(sharding, 4), out[0].sharding
        for a, b in zip(ref, out):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        kinds.add(bool(np.all((np.asarray(ref[0]) == np.asarray(images))
                              | (np.asarray(ref[0]) == np.asarray(images)[::-1]))))
    assert kinds == {True, False}, kinds  # both cutmix and mixup were compared
    print("OK")
    """
)


@pytest.mark.slow
def test_same_result_on_one_device_and_sharded_over_eight():
    result = run_on_eight_devices(SHARDED_SCRIPT)
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-3000:]
