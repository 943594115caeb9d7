"""Start-of-run summaries: the parameter table (``jax.tree_util.keystr`` paths)."""

from __future__ import annotations

import math

import jax
from flax import nnx


def parameter_overview(params: nnx.State) -> str:
    """A table of every parameter array (path, shape, size, sharding spec) and the total:
    ``path | shape | size | spec`` lines, aligned, ending with ``total N parameters``."""
    rows = []
    for path, x in jax.tree_util.tree_leaves_with_path(params):
        name = jax.tree_util.keystr(path, simple=True, separator="/").removesuffix("/value")
        spec = getattr(getattr(x, "sharding", None), "spec", "")
        rows.append((name, str(tuple(x.shape)), f"{math.prod(x.shape):,}", str(spec)))
    total = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    header = ("parameter", "shape", "size", "sharding")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join([*lines, f"total {total:,} parameters in {len(rows)} arrays"])
