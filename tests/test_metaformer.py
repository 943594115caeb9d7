"""The Energy MetaFormer on the digits (analysis.metaformer): trained through the core's descent,
its denoising loss falls and its energy never rises along the descent from random states."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imixer_jax.analysis import metaformer

F32_EPS = float(jnp.finfo(jnp.float32).eps)


@pytest.fixture(scope="module")
def trained():
    """20 epochs of the official recipe (60 Adam updates): a fifth of the notebook's run."""
    return metaformer.train(metaformer.Recipe(epochs=20))


def test_digits_are_unit_vectors():
    x = metaformer.digits("train")
    assert x.shape == (1437, 64) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=4 * F32_EPS)


def test_denoising_loss_falls(trained):
    losses = trained.losses
    assert losses.shape == (20, 3)  # 1,437 digits: batches of 512, 512 and 413
    assert np.all(np.isfinite(losses))
    # Batch losses scatter by about 0.002 within an epoch; the official recipe (Adam 1e-4) lowers
    # the epoch mean by about 0.02 in 20 epochs (0.955 -> 0.88 in 100).
    assert losses[-1].mean() < losses[0].mean() - 0.01, losses.mean(axis=1)


def test_energy_of_the_trained_network_does_not_rise(trained):
    energies = metaformer.energy_descent(trained.network, jax.random.PRNGKey(0))
    assert energies.shape == (29, 8)
    # Each energy is a sum of O(100) float32 terms: steps may go up by its rounding only.
    slack = 64 * F32_EPS * (1.0 + jnp.abs(energies[1:]))
    assert bool(jnp.all(jnp.diff(energies, axis=0) <= slack))
    assert bool(jnp.all(energies[-1] < energies[0] - 100.0))  # from 10 N(0, 1) states: a long way


def test_receptive_fields_are_images_per_hidden_neuron(trained):
    fields = metaformer.receptive_fields(trained.params)
    assert {k: v.shape for k, v in fields.items()} == {"xi_sv": (81, 8, 8), "xi_vc": (81, 8, 8)}
    np.testing.assert_array_equal(fields["xi_vc"][3].ravel(), trained.params["xi_vc"][:, 3])
    np.testing.assert_array_equal(fields["xi_sv"][3].ravel(), trained.params["xi_sv"][3])
