"""``prepare``: everything derived from a config before anything compiles, and ``init_state``.

``prepare`` validates the config, starts ``jax.distributed`` when asked, resolves the mesh, reads
the dataset's facts, builds the optimiser and the abstract model: everything that can fail does so
here. ``init_state`` then creates a fresh state (``train_state.new_state``) directly into its
``NamedSharding``s (``jax.eval_shape``, then ``jit(init, out_shardings)``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh

from imixer_jax import data
from imixer_jax.models import configs
from imixer_jax.training import config as config_lib
from imixer_jax.training import optim, sharding
from imixer_jax.training.steps import StepSettings
from imixer_jax.training.train_state import RUN_ONCE, TrainState, graphdefs, new_state
from imixer_jax.weights import formats as weights_formats


@dataclasses.dataclass(frozen=True)
class Setup:
    """What ``prepare`` derives from a config; nothing here has been compiled."""

    config: ml_collections.ConfigDict
    model_config: configs.ModelConfig  # ``config.model`` typed, converted once by ``prepare``
    mesh: Mesh
    plan: optim.Plan
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    graphdef: nnx.GraphDef  # training mode
    eval_graphdef: nnx.GraphDef  # evaluation mode
    abstract_state: TrainState  # jax.ShapeDtypeStruct leaves with .sharding
    eval_split: str

    @property
    def state_shardings(self):
        return jax.tree.map(lambda x: x.sharding, self.abstract_state)

    @property
    def step_settings(self) -> StepSettings:
        """What ``steps.make_train_step`` builds the train step of this run from."""
        config = self.config
        return StepSettings(
            mesh=self.mesh,
            graphdef=self.graphdef,
            tx=self.tx,
            schedule=self.schedule,
            state_shardings=self.state_shardings,
            num_classes=config.model.num_classes,
            image_size=config.model.img_size,
            augment=config.data.augment.to_dict(),
            accum_steps=config.optimizer.accum_steps,
            ema_decay=config.optimizer.ema_decay,
        )


def resolve_mesh_shape(
    config: ml_collections.ConfigDict, device_count: int, process_count: int
) -> tuple[int, ...]:
    """``config.mesh.shape`` with its -1 resolved, after checking that the devices and the batch
    sizes fit it (still before anything compiles).

    Raises:
      config_lib.ConfigError: one line naming ``mesh.shape``, ``batch_size`` or
        ``eval_batch_size``.
    """
    try:
        shape = sharding.mesh_shape(tuple(config.mesh.shape), device_count)
    except ValueError as e:
        raise config_lib.ConfigError(f"config.mesh.shape: {e}") from e
    devices = math.prod(shape)  # the batch is split over every device (batch_sharding)
    shards = math.lcm(devices, process_count)
    for key in ("batch_size", "eval_batch_size"):
        if config[key] % shards:
            raise config_lib.ConfigError(
                f"config.{key}: {config[key]} is not divisible by the {devices} devices it is "
                f"split over and {process_count} processes"
            )
    return shape


def prepare(
    config: ml_collections.ConfigDict,
    *,
    devices: Sequence[jax.Device] | None = None,
    dataset: data.DatasetInfo | None = None,
) -> Setup:
    """Validate ``config`` and derive everything needed to train or evaluate it.

    ``devices``: the mesh's devices (default: every device of every process, after
    ``jax.distributed`` has started when the config asks for it), e.g. those of a TPU topology
    to compile for ahead of time. ``dataset``: the dataset's facts (default: read from the
    dataset).

    Raises (each with a one-line message, before any compilation):
      config_lib.ConfigError: invalid config, or a dataset that is not prepared (the message
        says how to prepare it) or does not fit (split, features).
    """
    model_config = config_lib.validate(config)
    if devices is None:
        if not jax.distributed.is_initialized():
            sharding.initialize_distributed(config.distributed)
        device_count, process_count = jax.device_count(), jax.process_count()
    else:
        device_count, process_count = len(devices), len({d.process_index for d in devices})
    shape = resolve_mesh_shape(config, device_count, process_count)
    info = _dataset_info(config) if dataset is None else dataset
    if info.num_classes != config.model.num_classes:
        raise config_lib.ConfigError(
            f"config.model.num_classes: {config.model.num_classes} but dataset "
            f"{config.data.name!r} has {info.num_classes} classes"
        )
    mesh = sharding.create_mesh(shape, tuple(config.mesh.axes), devices)
    plan = optim.plan(config, info.num_train)
    tx, schedule = optim.create(config, plan)

    graphdef, eval_graphdef = graphdefs(model_config)
    abstract = jax.eval_shape(lambda: _init(config, model_config, tx))
    init_from = config_lib.init_from(config)
    try:  # the file's content (headers), against the model, before anything is created
        if init_from is not None:
            weights_formats.check(init_from, model_config, abstract.params, abstract.rest)
    except weights_formats.PretrainedError as e:
        raise config_lib.ConfigError(f"config.init_from.path: {e}") from e
    shardings = sharding.tree_shardings(mesh, abstract, fsdp=config.mesh.fsdp)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
    )
    return Setup(
        config=config,
        model_config=model_config,
        mesh=mesh,
        plan=plan,
        tx=tx,
        schedule=schedule,
        graphdef=graphdef,
        eval_graphdef=eval_graphdef,
        abstract_state=abstract,
        eval_split=info.eval_split,
    )


def _dataset_info(config: ml_collections.ConfigDict) -> data.DatasetInfo:
    try:  # not prepared (the message says how to prepare it), unknown split, not images, ...
        return data.dataset_info(
            config.data.name,
            data_dir=config.data.data_dir,
            train_split=config.data.train_split,
            eval_split=config.data.eval_split,
        )
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise config_lib.ConfigError(f"config.data: {' '.join(str(e).split())}") from e


def _init(
    config: ml_collections.ConfigDict,
    model_config: configs.ModelConfig,
    tx: optax.GradientTransformation,
) -> TrainState:
    return new_state(model_config, tx, seed=config.seed, ema=config.optimizer.ema_decay > 0)


def init_state(setup: Setup) -> TrainState:
    """A fresh train state, created directly into its shardings."""
    init = jax.jit(
        lambda: _init(setup.config, setup.model_config, setup.tx),
        out_shardings=setup.state_shardings,
        compiler_options=RUN_ONCE,
    )
    return init()
