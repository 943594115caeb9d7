"""Ahead-of-time compilation of the trainer's steps for a TPU topology, on a machine without TPUs.

``compile_for_topology(config, 'v5e:4x4')`` builds the run exactly as training does
(``prepare`` on the topology's devices, the state's ``NamedSharding``s, ``make_train_step`` and
``make_eval_step``), lowers both steps with abstract inputs (``jax.ShapeDtypeStruct``s carrying
their shardings) and compiles them with libtpu's compiler for that topology. XLA then reports,
per chip, the bytes each program needs (``memory_analysis``) and its FLOPs (``cost_analysis``);
nothing runs and no figure is a measured TPU time.

Needs libtpu (``pip install -e ".[tpu]"``); libtpu is loaded only here, with the environment of
a single host that compiles (``_LIBTPU_ENV``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import time
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from imixer_jax import data
from imixer_jax.models import flops
from imixer_jax.training import sharding
from imixer_jax.training.state import Setup, prepare
from imixer_jax.training.steps import make_eval_step, make_train_step

GiB = 2**30
GB = 10**9


class TopologyError(ValueError):
    """A topology that cannot be compiled for (unknown name or shape, no libtpu) or a mesh that
    does not fit its chips; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Chip:
    """A TPU generation: its ``device_kind``, HBM per chip, libtpu chip config and the Cloud TPU
    page that documents the HBM size."""

    device_kind: str
    hbm_bytes: int
    hbm_label: str
    chip_config: str
    source: str


# HBM per chip as the Cloud TPU system-architecture pages state it ("GB" read as 10^9 bytes, the
# lower reading). v4 and v5p chips hold two TensorCores that JAX drives as one device
# ("megacore"), so every device below is one chip.
CHIPS: Mapping[str, Chip] = {
    "v4": Chip("TPU v4", 32 * GiB, "32 GiB", "megacore", "https://cloud.google.com/tpu/docs/v4"),
    "v5e": Chip(
        "TPU v5 lite", 16 * GiB, "16 GiB", "default", "https://cloud.google.com/tpu/docs/v5e"
    ),
    "v5p": Chip("TPU v5", 95 * GB, "95 GB", "megacore", "https://cloud.google.com/tpu/docs/v5p"),
    "v6e": Chip(
        "TPU v6 lite", 32 * GB, "32 GB", "default", "https://cloud.google.com/tpu/docs/v6e"
    ),
}
_TOPOLOGY = re.compile(r"^(v\d+[a-z]?):(\d+(?:x\d+){1,2})$")
EXAMPLES = "e.g. v5e:4x4, v5p:2x2x4, v4:2x2x2 or v6e:2x2"

# libtpu reads these once, when it is loaded. This process is one host that compiles: without
# them libtpu, finding no Cloud TPU VM (JAX sets TPU_SKIP_MDS_QUERY when it sees no chip), prints
# warnings about TPU_ACCELERATOR_TYPE and TPU_WORKER_HOSTNAMES on stderr.
# ALLOW_MULTIPLE_LIBTPU_LOAD: without it a second process that loads libtpu at the same time
# fails on libtpu's lockfile; compiling opens no chip, so the processes share nothing.
_LIBTPU_ENV = {
    "TPU_WORKER_HOSTNAMES": "localhost",
    "TPU_HOST_BOUNDS": "1,1,1",
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
}


def libtpu_available() -> bool:
    """Whether libtpu (the TPU compiler) can be loaded."""
    return importlib.util.find_spec("libtpu") is not None or "TPU_LIBRARY_PATH" in os.environ


def topology_devices(name: str) -> tuple[Chip, list[jax.Device]]:
    """The chip and the devices (one per chip) of TPU topology ``name`` ('v5e:4x4', ...).

    Raises:
      TopologyError: a name of no known generation, a shape libtpu rejects, or no libtpu.
    """
    match = _TOPOLOGY.match(name)
    if match is None or match.group(1) not in CHIPS:
        raise TopologyError(
            f"unknown TPU topology {name!r}; give <generation>:<chips per axis> with a "
            f"generation of {', '.join(CHIPS)}, {EXAMPLES}"
        )
    if not libtpu_available():
        raise TopologyError(
            f'compiling for {name} needs libtpu, which is not installed; pip install -e ".[tpu]"'
        )
    chip = CHIPS[match.group(1)]
    from jax.experimental import topologies

    for key, value in _LIBTPU_ENV.items():
        os.environ.setdefault(key, value)
    try:
        topology = topologies.get_topology_desc(
            topology_name=name, platform="tpu", chip_config_name=chip.chip_config
        )
    except jax.errors.JaxRuntimeError as e:
        cause = " ".join(str(e).split()).removeprefix("INVALID_ARGUMENT: ")
        raise TopologyError(f"TPU topology {name!r}: {cause}; {EXAMPLES}") from e
    return chip, list(topology.devices)


def stand_in_dataset(config: ml_collections.ConfigDict) -> data.DatasetInfo:
    """The dataset facts a compile needs without reading the dataset: the config's classes and
    one global batch per epoch. They only set the learning-rate schedule's constants, which
    change neither the programs' memory nor their FLOPs."""
    return data.DatasetInfo(
        name=config.data.name,
        num_classes=config.model.num_classes,
        num_train=config.batch_size,
        num_eval=config.eval_batch_size,
        train_split=config.data.train_split,
        eval_split=config.data.eval_split or "test",
        image_shape=(None, None, 3),
    )


def abstract_batches(setup: Setup) -> tuple[dict, dict]:
    """``(train, eval)`` global batches as ``ShapeDtypeStruct``s sharded on ``'data'``, laid out
    as the input pipeline yields them (uint8 training images with augmentation on device)."""
    config, batch_sharding = setup.config, sharding.batch_sharding(setup.mesh)
    size = config.model.img_size

    def spec(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding)

    b, e = config.batch_size, config.eval_batch_size
    image_dtype = jnp.uint8 if config.data.augment.on_device else jnp.float32
    train = {"image": spec((b, size, size, 3), image_dtype), "label": spec((b,), jnp.int32)}
    evaluation = {
        "image": spec((e, size, size, 3), jnp.float32),
        "label": spec((e,), jnp.int32),
        "mask": spec((e,), jnp.bool_),
    }
    return train, evaluation


@dataclasses.dataclass(frozen=True)
class Program:
    """One compiled step: XLA's per-chip bytes and FLOPs and the seconds it took to compile.

    ``peak_bytes``: what a chip holds while the step runs: XLA's arguments + outputs - aliased
    (donated arguments updated in place) + temporaries + code, and the other buffers resident
    beside the step (for the eval step, the rest of the train state). ``out_of_memory``: XLA's
    line when it refused the program because it does not fit a chip's HBM; the byte and FLOP
    fields are None then.
    """

    compile_s: float
    analytic_flops: float  # per chip: the matmul FLOPs of the step divided by the chips
    xla_flops: float | None = None  # per chip; XLA counts a while loop's body once
    argument_bytes: int | None = None
    output_bytes: int | None = None
    alias_bytes: int | None = None
    temp_bytes: int | None = None
    code_bytes: int | None = None
    peak_bytes: int | None = None
    out_of_memory: str | None = None


def compile_program(step, args: tuple, analytic_flops: float, resident_bytes: int = 0) -> Program:
    """Lower the jitted ``step`` for the abstract ``args`` (``ShapeDtypeStruct``s with shardings
    on a topology's devices) and compile it; ``analytic_flops`` is carried into the result (see
    ``Program``)."""
    start = time.perf_counter()
    try:
        compiled = step.lower(*args).compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        line = " ".join(str(e).split()).removeprefix("RESOURCE_EXHAUSTED: ")
        return Program(time.perf_counter() - start, analytic_flops, out_of_memory=line)
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    return Program(
        compile_s=seconds,
        analytic_flops=analytic_flops,
        xla_flops=float(compiled.cost_analysis()["flops"]),
        argument_bytes=memory.argument_size_in_bytes,
        output_bytes=memory.output_size_in_bytes,
        alias_bytes=memory.alias_size_in_bytes,
        temp_bytes=memory.temp_size_in_bytes,
        code_bytes=memory.generated_code_size_in_bytes,
        peak_bytes=memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        - memory.alias_size_in_bytes
        + memory.temp_size_in_bytes
        + memory.generated_code_size_in_bytes
        + resident_bytes,
    )


def _shard_bytes(tree) -> int:
    """Bytes of one device's shards of the ``ShapeDtypeStruct``s of ``tree`` (the largest
    shard where shards differ)."""
    return sum(
        math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
        for x in jax.tree.leaves(tree)
    )


def _name(path: tuple) -> str:
    """Key path of a parameter -> 'blocks/0/channel_mlp/fc_c1/kernel' (the ``.value`` of an
    ``nnx.Variable`` dropped)."""
    if path and path[-1] == jax.tree_util.GetAttrKey("value"):
        path = path[:-1]
    return jax.tree_util.keystr(path, simple=True, separator="/")


def parameter_layout(setup: Setup) -> dict[str, list[dict]]:
    """The parameters grouped by the mesh axes that split them ('replicated' for none): per
    group, one row per parameter name with block indices as '*', its dimensions' axes, how many
    arrays and elements it has."""
    groups: dict[str, dict[str, dict]] = {}
    flat = jax.tree_util.tree_flatten_with_path(setup.abstract_state.params)[0]
    for path, x in flat:
        spec = tuple(x.sharding.spec) + (None,) * (len(x.shape) - len(x.sharding.spec))
        axes = sorted({a for entry in spec if entry for a in np.atleast_1d(entry)})
        group = "+".join(axes) or "replicated"
        name = re.sub(r"/\d+/", "/*/", _name(path))
        row = groups.setdefault(group, {}).setdefault(
            name, {"name": name, "spec": [e if e else None for e in spec], "arrays": 0, "size": 0}
        )
        row["arrays"] += 1
        row["size"] += math.prod(x.shape)
    return {group: list(rows.values()) for group, rows in sorted(groups.items())}


@dataclasses.dataclass(frozen=True)
class Report:
    """What ``compile_for_topology`` found; ``to_dict`` for JSON."""

    topology: str
    device_kind: str
    chips: int
    hbm_bytes: int
    hbm_label: str
    hbm_source: str
    mesh: dict[str, int]
    dtype: str
    batch_size: int
    eval_batch_size: int
    state_bytes: int  # per chip
    params: int
    train: Program
    eval: Program
    layout: dict[str, list[dict]]

    @property
    def peak_bytes(self) -> int | None:
        """The larger step's peak; None when XLA refused a step as too large."""
        peaks = (self.train.peak_bytes, self.eval.peak_bytes)
        return None if None in peaks else max(peaks)

    @property
    def fits(self) -> bool:
        return self.peak_bytes is not None and self.peak_bytes <= self.hbm_bytes

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "peak_bytes": self.peak_bytes, "fits": self.fits}


def compile_for_topology(config: ml_collections.ConfigDict, topology: str) -> Report:
    """Compile the train and eval steps of ``config`` for TPU ``topology`` ('v5e:4x4').

    The mesh is ``config.mesh`` over the topology's chips. The dataset is not read
    (``stand_in_dataset``).

    Raises (one line each, before anything compiles):
      TopologyError: see ``topology_devices``.
      config_lib.ConfigError: an invalid config, or a mesh or batch that the chips do not fit.
    """
    chip, devices = topology_devices(topology)
    chips = len(devices)
    try:
        sharding.mesh_shape(tuple(config.mesh.shape), chips)
    except ValueError as e:
        raise TopologyError(
            f"config.mesh.shape: {e} (the chips of {topology}); give a shape of {chips} chips, "
            f"e.g. --config.mesh.shape='({chips}, 1)'"
        ) from e
    setup = prepare(config, devices=devices, dataset=stand_in_dataset(config))
    config = setup.config
    train_batch, eval_batch = abstract_batches(setup)
    state = setup.abstract_state
    forward = flops.forward_flops(setup.model_config)
    state_bytes = _shard_bytes(state)
    train = compile_program(
        make_train_step(setup), (state, train_batch), 3.0 * forward * config.batch_size / chips
    )
    evaluation = compile_program(
        make_eval_step(setup),
        (state.params, state.rest, eval_batch),
        forward * config.eval_batch_size / chips,
        resident_bytes=state_bytes - _shard_bytes((state.params, state.rest)),
    )
    return Report(
        topology=topology,
        device_kind=chip.device_kind,
        chips=chips,
        hbm_bytes=chip.hbm_bytes,
        hbm_label=chip.hbm_label,
        hbm_source=chip.source,
        mesh=dict(setup.mesh.shape),
        dtype=config.model.dtype or "float32",
        batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size,
        state_bytes=state_bytes,
        params=sum(math.prod(x.shape) for x in jax.tree.leaves(state.params)),
        train=train,
        eval=evaluation,
        layout=parameter_layout(setup),
    )
