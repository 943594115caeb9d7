"""Pinned outputs of the parallelized Mixer family: rebuilding its blocks must not change them.

``tests/data/paramixer_pinned.npz`` was written once, from the explicit-module blocks as they
stood before the blocks were assembled from the Hopfield graph core, by
``python -m tests.test_paramixer_pinned --write`` (never rerun it to make a test pass: a
difference is a behaviour change to explain, not a golden to refresh). For every variant of the
family (serial and parallel blocks; vanilla, symmetric and asymmetric MLPs; Euler update;
``repeats``; bfloat16) it holds the parameters drawn from ``nnx.Rngs(0)``, the training
logits (drop path active), the gradient of the cross-entropy (plus the symmetry-breaking penalty
where set) and the evaluation logits. The comparison rules are those of ``tests/pinned.py``.

Rewritten once, on purpose, with ``tests/data/pinned_models.npz`` (the erf GELU and the 2D GEMM of
issue 19; ``tests/test_pinned.py`` says why): parameters bit-identical, float32 logits and
gradients within 1e-6 of the previous goldens, bfloat16 logits within 2e-2.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax
import pytest
from flax import nnx

from tests import tiny
from tests.pinned import DATA, assert_case_pinned, flat_state, load_golden

FILE = os.path.join(DATA, "paramixer_pinned.npz")

TINY = dict(tiny.PINNED)
CASES = {
    "vanilla_serial": dict(block="serial"),
    "vanilla_serial_ni2": dict(block="serial", repeats=2),
    "parallel": dict(),
    "symmetric": dict(mlp="symmetric"),
    "symmetric_euler_scalar": dict(
        mlp="symmetric", update_rule="euler", step_size=0.5, scalar_scale=True, repeats=2
    ),
    "asymmetric_penalty": dict(mlp="asymmetric", asym_penalty=0.01, activation="relu"),
    "asymmetric_bf16_ni2": dict(mlp="asymmetric", repeats=2, dtype="bfloat16"),
    "serial_symmetric_softplus": dict(block="serial", mlp="symmetric", activation="softplus"),
}


def compute_case(name: str) -> dict[str, np.ndarray]:
    """Every pinned array of one variant, keyed ``<what>:<path>``."""
    from imixer_jax.models.configs import ParaMixerConfig
    from imixer_jax.models.paramixer import ParaMixer

    model = ParaMixer(ParaMixerConfig(**TINY, **CASES[name]), rngs=nnx.Rngs(0))
    kernel = model.head.kernel
    kernel[...] = jax.random.normal(jax.random.key(7), kernel.shape)  # the zero head hides all
    images = jax.random.uniform(jax.random.key(1), (4, 16, 16, 3), minval=-1.0, maxval=1.0)
    labels = jnp.arange(4) % 10
    out = {f"param:{k}": v for k, v in flat_state(nnx.state(model, nnx.Param)).items()}

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(params):
        m = nnx.merge(graphdef, params, rest, copy=True)
        logits = m(images, rngs=nnx.Rngs(dropout=2))
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss + m.penalty(), logits

    (_, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    out["train_logits"] = np.asarray(logits)
    out.update({f"grad:{k}": v for k, v in flat_state(grads).items()})
    model.eval()
    out["eval_logits"] = np.asarray(model(images))
    return out


@pytest.fixture(scope="module")
def golden():
    return load_golden(FILE)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_paramixer_outputs_pinned(name, golden):
    assert_case_pinned(name, compute_case(name), golden)


def _write() -> None:
    arrays = {"jaxlib": np.asarray(jaxlib.__version__)}
    for name in CASES:
        arrays.update({f"{name}::{k}": v for k, v in compute_case(name).items()})
    np.savez_compressed(FILE, **arrays)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.test_paramixer_pinned --write  (only before a refactor)")
    _write()
