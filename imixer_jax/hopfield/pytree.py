"""``dataclass``: the frozen pytree dataclass of the Hopfield core (Lagrangians, layers,
synapses, networks, solver results), with ``flax.struct.dataclass``'s interface: fields are
leaves unless marked ``flax.struct.field(pytree_node=False)`` (static), ``.replace(**changes)``
returns a copy. Use it for new pieces built on the core.

Written here rather than taken from flax because of a JAX 0.10 fault: the tree structures of two
different classes registered with ``jax.tree_util.register_dataclass`` (which
``flax.struct.dataclass`` uses) compare equal when their static fields are equal, e.g. ``ReLU()``
and ``GELU()``, while their hashes differ. ``jax.jit``'s cache of compiled programs then runs the
program traced for one class on the other whenever the two hashes meet in its table: rarely, and
depending on memory addresses. A node registered with ``register_pytree_with_keys``, as here, is
compared by its class as well (tested in ``tests/test_hopfield_graph.py``).
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar

import jax
from jax.tree_util import GetAttrKey

T = TypeVar("T")

__all__ = ["dataclass"]


def dataclass(cls: type[T]) -> type[T]:
    """Make ``cls`` a frozen dataclass and register it as a pytree node whose leaves are its
    fields without ``pytree_node=False``; the others are static (in the tree structure)."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    data, static = [], []
    for f in dataclasses.fields(cls):
        (data if f.metadata.get("pytree_node", True) else static).append(f.name)

    def flatten_with_keys(x):
        return [(GetAttrKey(n), getattr(x, n)) for n in data], tuple(getattr(x, n) for n in static)

    def flatten(x):
        return [getattr(x, n) for n in data], tuple(getattr(x, n) for n in static)

    def unflatten(aux, children):  # through __init__ (and __post_init__), as flax's does
        return cls(**dict(zip(data, children)), **dict(zip(static, aux)))

    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
    cls.replace = lambda self, **changes: dataclasses.replace(self, **changes)
    cls.replace.__doc__ = "A copy with ``changes`` to its fields."
    return cls
