"""Device mesh, partition rules, multi-host start-up and global batches.

* ``initialize_distributed``: ``jax.distributed.initialize`` when the ``distributed`` settings or
  a multi-process launcher ask for it.
* ``mesh_shape`` resolves the -1 of a configured mesh shape; ``create_mesh``: a
  ``jax.sharding.Mesh`` of that shape and the axis names (``('data', 'model')`` by default) with
  ``Auto`` axes, i.e. GSPMD propagates shardings inside ``jit``.
* ``PARTITION_RULES``: parameter path (regex) -> ``PartitionSpec``. Megatron-style pairs on
  ``'model'``: the first Linear of an MLP splits its output features, the second its input features
  (channel MLP fc_c1/fc_c2 over C, token MLP fc1/fc2 over T, iMLP fc_sn1/fc_sn2 over H). Every other
  array is replicated. A rule also matches the same parameter inside optimiser or EMA state (the
  path ends the same), and a dimension whose size the mesh axis does not divide is replicated.
* ``global_batch``: this process's rows -> a global ``jax.Array`` sharded on ``'data'``
  (``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

P = PartitionSpec
_CLUSTER_ENV = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "MEGASCALE_NUM_SLICES")

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


def wants_distributed(dist: ml_collections.ConfigDict) -> bool:
    """Whether to call ``jax.distributed.initialize`` for the ``distributed`` settings ``dist``:
    ``initialize`` 'always'; 'never'; 'auto' = a coordinator address is set or a multi-process
    launcher's environment is found (SLURM, Open MPI, multislice TPU). On a Cloud TPU pod without
    these variables use 'always'."""
    if dist.initialize != "auto":
        return dist.initialize == "always"
    if dist.coordinator_address:
        return True
    return any(int(os.environ.get(name, "1") or "1") > 1 for name in _CLUSTER_ENV)


def initialize_distributed(dist: ml_collections.ConfigDict) -> None:
    """``jax.distributed.initialize`` when ``wants_distributed(dist)``; must run before any other
    JAX call touches a device. On CPU the cross-process collectives use gloo."""
    if not wants_distributed(dist):
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=dist.coordinator_address,
        num_processes=dist.num_processes,
        process_id=dist.process_id,
    )
    logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())


def mesh_shape(shape: tuple[int, ...], device_count: int) -> tuple[int, ...]:
    """``shape`` (at most one -1) with its -1 resolved for ``device_count`` devices.

    Raises:
      ValueError: the shape does not use exactly ``device_count`` devices; one line.
    """
    shape = tuple(shape)
    known = math.prod(n for n in shape if n != -1)
    if -1 in shape:
        if device_count % known:
            raise ValueError(f"{shape} does not divide the {device_count} devices")
        shape = tuple(device_count // known if n == -1 else n for n in shape)
    if math.prod(shape) != device_count:
        raise ValueError(f"{shape} needs {math.prod(shape)} devices, but there are {device_count}")
    return shape


def create_mesh(
    shape: tuple[int, ...], axes: tuple[str, ...], devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """Mesh over ``devices`` (default: all devices of every process); ``shape`` has no -1 (see
    ``mesh_shape``)."""
    return jax.make_mesh(
        tuple(shape), tuple(axes), axis_types=(AxisType.Auto,) * len(axes), devices=devices
    )


def path_str(path: tuple) -> str:
    """``jax.tree_util`` key path -> 'blocks/0/channel_mlp/fc_c1/kernel' (nnx's trailing
    ``.value`` of a Variable dropped)."""
    if path and path[-1] == jax.tree_util.GetAttrKey("value"):
        path = path[:-1]
    return jax.tree_util.keystr(path, simple=True, separator="/")


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
