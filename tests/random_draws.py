"""``jax.random`` draws for the tests, bit for bit, without one compilation per shape.

Called eagerly, ``jax.random.normal(key, shape)`` compiles a threefry program for every new shape:
0.3 s of CPU for a vector, 1.5-2 s for a small 3-d array on the 2-core machine, and the tests draw
dozens of shapes. With partitionable threefry (``jax_threefry_partitionable``, JAX's default) a
draw of n values is the first n values of a longer draw from the same key, so these draw a flat
pool of a few fixed sizes (one compilation each) and cut the requested shape out of it on the host:
the same numbers as ``jax.random``. Under a transformation (a traced key) they are
``jax.random`` itself.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def _eager(key) -> bool:
    """A concrete key (not traced), and the threefry mode in which the prefix property holds."""
    return (
        jax.config.jax_threefry_partitionable
        and isinstance(key, jax.Array)
        and not isinstance(key, jax.core.Tracer)
    )


def _pool(n: int) -> int:
    return max(4096, 1 << (n - 1).bit_length())


def _cut(pool: jax.Array, shape) -> jax.Array:
    return jnp.asarray(np.asarray(pool)[: math.prod(shape)].reshape(shape))


def normal(key, shape=(), dtype=jnp.float32) -> jax.Array:
    """``jax.random.normal(key, shape, dtype)``."""
    if not _eager(key):
        return jax.random.normal(key, shape, dtype)
    return _cut(jax.random.normal(key, (_pool(math.prod(shape)),), dtype), tuple(shape))


def uniform(key, shape=(), dtype=jnp.float32, minval=0.0, maxval=1.0) -> jax.Array:
    """``jax.random.uniform(key, shape, dtype, minval, maxval)`` (scalar bounds)."""
    if not _eager(key):
        return jax.random.uniform(key, shape, dtype, minval, maxval)
    pool = jax.random.uniform(key, (_pool(math.prod(shape)),), dtype, minval, maxval)
    return _cut(pool, tuple(shape))


def split(key, num: int = 2) -> jax.Array:
    """``jax.random.split(key, num)`` (typed keys, ``jax.random.key``, as ``jax.random``)."""
    if not _eager(key) or jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.split(key, num)
    pool = jax.random.split(key, max(64, 1 << (num - 1).bit_length()))
    return jnp.asarray(np.asarray(pool)[:num])
