"""Device mesh, partition rules, multi-host start-up and global batches.

* ``create_mesh``: a ``jax.sharding.Mesh`` of the config's shape and axis names (``('data',
  'model')`` by default) with ``Auto`` axes, i.e. GSPMD propagates shardings inside ``jit``.
* ``PARTITION_RULES``: parameter path (regex) -> ``PartitionSpec``. Megatron-style pairs on
  ``'model'``: the first Linear of an MLP splits its output features, the second its input features
  (channel MLP fc_c1/fc_c2 over C, token MLP fc1/fc2 over T, iMLP fc_sn1/fc_sn2 over H). Every other
  array is replicated. A rule also matches the same parameter inside optimiser or EMA state (the
  path ends the same), and a dimension whose size the mesh axis does not divide is replicated.
* ``global_batch``: this process's rows -> a global ``jax.Array`` sharded on ``'data'``
  (``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from imixer_jax import config as config_lib

P = PartitionSpec

_PER_BLOCK_RULES: tuple[tuple[str, PartitionSpec], ...] = (
    (r"channel_mlp/fc_c1/kernel$", P(None, "model")),
    (r"channel_mlp/fc_c1/bias$", P("model")),
    (r"channel_mlp/fc_c2/kernel$", P("model", None)),
    (r"token_mixer/fc1/kernel$", P(None, "model")),
    (r"token_mixer/fc1/bias$", P("model")),
    (r"token_mixer/fc2/kernel$", P("model", None)),
    (r"token_mixer/fc_sn1/kernel$", P(None, "model")),
    (r"token_mixer/fc_sn1/bias$", P("model")),
    (r"token_mixer/fc_sn2/kernel$", P("model", None)),
)
# scan_blocks: every block variable has a leading [num_blocks] axis, kept replicated.
PARTITION_RULES: tuple[tuple[str, PartitionSpec], ...] = _PER_BLOCK_RULES + tuple(
    (pattern, P(None, *spec)) for pattern, spec in _PER_BLOCK_RULES
)


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
    """``jax.distributed.initialize`` when ``config.distributed`` asks for it (see
    ``config.wants_distributed``); must run before any other JAX call touches a device. On CPU the
    cross-process collectives use gloo."""
    if not config_lib.wants_distributed(config):
        return
    dist = config.distributed
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=dist.coordinator_address,
        num_processes=dist.num_processes,
        process_id=dist.process_id,
    )
    logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())


def create_mesh(shape: tuple[int, ...], axes: tuple[str, ...]) -> Mesh:
    """Mesh over all devices of every process; ``shape`` has no -1 (see validate_devices)."""
    return jax.make_mesh(tuple(shape), tuple(axes), axis_types=(AxisType.Auto,) * len(axes))


def path_str(path: tuple) -> str:
    """``jax.tree_util`` key path -> 'blocks/0/channel_mlp/fc_c1/kernel' (nnx's trailing
    ``.value`` of a Variable dropped)."""
    names = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            names.append(str(key.key))
        elif isinstance(key, jax.tree_util.SequenceKey):
            names.append(str(key.idx))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            names.append(key.name)
        else:
            names.append(str(key))
    if names and names[-1] == "value":
        names.pop()
    return "/".join(names)


def partition_spec(path: str, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    """Spec of the array at ``path``: the first matching rule, with every dimension that the mesh
    cannot split (axis absent, or size not divisible) replicated; no rule = replicated."""
    for pattern, spec in PARTITION_RULES:
        if re.search(pattern, path) and len(spec) == len(shape):
            return P(
                *(
                    axis
                    if axis in mesh.shape and size % mesh.shape[axis] == 0 and mesh.shape[axis] > 1
                    else None
                    for axis, size in zip(spec, shape)
                )
            )
    return P()


def tree_shardings(mesh: Mesh, tree):
    """``NamedSharding`` for every leaf (array or ``ShapeDtypeStruct``) of ``tree``."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: NamedSharding(mesh, partition_spec(path_str(path), np.shape(x), mesh)),
        tree,
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis on ``'data'``, the rest replicated."""
    return NamedSharding(mesh, P("data"))


def global_batch(mesh: Mesh, local: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's rows ``{name: [b, ...]}`` -> global arrays ``[b * process_count, ...]``
    sharded on ``'data'``; each process's block lands at its devices' place along ``'data'``
    (process order for meshes from ``create_mesh``)."""
    sharding = batch_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in local.items()
    }
