"""Device mesh, partition rules, multi-host start-up and global batches.

* ``initialize_distributed``: ``jax.distributed.initialize`` when the ``distributed`` settings or
  a multi-process launcher ask for it.
* ``mesh_shape`` resolves the -1 of a configured mesh shape; ``create_mesh``: a
  ``jax.sharding.Mesh`` of that shape and the axis names (``('data', 'model')`` by default) with
  ``Auto`` axes, i.e. GSPMD propagates shardings inside ``jit``.
* ``tree_shardings``: a ``NamedSharding`` for every array of a train state. The models declare
  how their parameters split (``models.partitioning``: Megatron-style pairs on ``'model'``); this
  module knows no parameter: it resolves the declared specs against the mesh (an axis that does not
  divide a dimension is dropped) and, with ``fsdp``, splits each large array over ``'data'`` too.
* ``global_batch``: this process's rows -> a global ``jax.Array`` sharded on ``'data'``
  (``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import jax
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec

from imixer_jax.models import partitioning

if TYPE_CHECKING:  # type hints only: the mesh helpers run without ml_collections
    import ml_collections

P = PartitionSpec
_CLUSTER_ENV = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "MEGASCALE_NUM_SLICES")

# FSDP leaves arrays below this size whole: gathering them would cost more latency than their
# memory is worth (big_vision's fsdp tactic uses 4 MiB as well).
FSDP_MIN_BYTES = 4 * 2**20


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


def partition_spec(
    declared: PartitionSpec,
    shape: tuple[int, ...],
    mesh_shape: Mapping[str, int],
    *,
    fsdp: bool = False,
    itemsize: int = 4,
) -> PartitionSpec:
    """The spec the mesh gives an array of ``shape`` whose model declared ``declared``: every
    axis the mesh cannot use there (absent, of size 1, or not dividing the dimension) dropped.

    ``fsdp``: in addition, an array of at least ``FSDP_MIN_BYTES`` gets its largest dimension
    that is still whole and divisible by the 'data' axis split over 'data' (ZeRO-3 / FSDP, as
    big_vision's fsdp tactic; GSPMD gathers it where it is used)."""
    axes = [*declared, *(None,) * (len(shape) - len(declared))]
    axes = [
        axis
        if axis is not None and mesh_shape.get(axis, 1) > 1 and size % mesh_shape[axis] == 0
        else None
        for axis, size in zip(axes, shape)
    ]
    data = mesh_shape.get("data", 1)
    if fsdp and data > 1 and "data" not in axes and math.prod(shape) * itemsize >= FSDP_MIN_BYTES:
        free = [i for i, (a, n) in enumerate(zip(axes, shape)) if a is None and n % data == 0]
        if free:
            axes[max(free, key=lambda i: shape[i])] = "data"
    return P(*axes)


def tree_shardings(mesh: Mesh | AbstractMesh, tree, *, fsdp: bool = False):
    """``NamedSharding`` for every leaf (array or ``ShapeDtypeStruct``) of ``tree``: the split
    its model declared (``nnx.get_partition_spec`` of the ``nnx.Variable`` holding it; a leaf
    outside any Variable, or one that declares nothing, is replicated) resolved by
    ``partition_spec``. Optimiser and EMA states hold the parameters' Variables, so they
    follow the parameters."""
    mesh_shape = dict(mesh.shape)
    return jax.tree.map(
        lambda declared, x: NamedSharding(
            mesh,
            partition_spec(
                declared, np.shape(x), mesh_shape, fsdp=fsdp, itemsize=np.dtype(x.dtype).itemsize
            ),
        ),
        nnx.get_partition_spec(tree),
        tree,
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split as ``models.partitioning.batch_spec`` (on ``'data'``, and on
    ``'model'`` too where the mesh has a model axis), the rest replicated: every chip holds and
    augments its own images, as the stem splits them. On ``'data'`` alone each chip of a model
    group would hold its whole data shard's images: at the official batch on v5e:4x4 (4, 4), 512
    float32 images of 224 px (308 MB) per chip instead of 128."""
    return NamedSharding(mesh, partitioning.batch_spec(dict(mesh.shape)))


def global_batch(mesh: Mesh, local: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's rows ``{name: [b, ...]}`` -> global arrays ``[b * process_count, ...]``
    split as ``batch_sharding``; each process's block lands at its devices' place along the
    batch (process order for meshes from ``create_mesh``)."""
    sharding = batch_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in local.items()
    }
