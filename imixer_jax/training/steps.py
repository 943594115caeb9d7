"""The jitted, sharded train and eval steps, pure functions of ``(state, global batch)``.

Every random draw of step s uses ``fold_in(root key, s)`` and the data pipeline yields batch s for
any restart point, so a resumed run repeats an uninterrupted one exactly. Evaluation merges the
state into the graphdef of ``model.eval()``. The model runs under the mesh
(``jax.sharding.use_abstract_mesh``), so that its own sharding constraints
(``models.partitioning.shard_residual``) see it.

The train step is built from typed ``StepSettings`` (the trainer's come from its config,
``state.Setup.step_settings``), so this module runs without ``ml_collections``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from imixer_jax import data
from imixer_jax.training import sharding
from imixer_jax.training.train_state import TrainState

Array = jax.Array


class EvalSetup(Protocol):
    """What the eval step and the metrics function read of the trainer's ``state.Setup``."""

    config: Any  # config.model.num_classes
    mesh: Mesh
    eval_graphdef: nnx.GraphDef

    @property
    def state_shardings(self) -> Any: ...


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """Everything the train step reads besides its arguments.

    Attributes:
      mesh: the device mesh; the batch is split as ``sharding.batch_sharding``.
      graphdef: the model's training-mode graphdef (``train_state.graphdefs``).
      tx: the optimiser; ``schedule``: its learning rate per update count (the ``lr`` metric).
      state_shardings: a ``TrainState`` of ``NamedSharding``s (in and out; the state is donated).
      num_classes: K of the targets; ``image_size``: S of the images the model sees.
      augment: the ``data.augment`` mapping (``data.AUGMENT_DEFAULTS``' keys): the mixing and,
        with ``on_device``, the device augmentation.
      accum_steps: steps per optimiser update (the EMA advances with the updates).
      ema_decay: decay of the parameters' EMA (used when the state keeps one).
    """

    mesh: Mesh
    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    state_shardings: TrainState
    num_classes: int
    image_size: int
    augment: Mapping[str, Any]
    accum_steps: int = 1
    ema_decay: float = 0.0


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def make_train_step(
    settings: StepSettings,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Jitted ``(state, batch) -> (state, metrics)``; ``state`` is donated.

    ``batch``: global ``{'image': [B, H, W, 3] float32, 'label': [B] int32}``, split as
    ``sharding.batch_sharding`` (with ``settings.augment['on_device']``: uint8 canvases with
    their crop ``'box'`` and ``'bilinear'``, cropped, resized and augmented here).
    ``metrics``: replicated float32 scalars ``loss`` (soft-target cross-entropy), ``accuracy``
    (on the hard labels), ``grad_norm`` (before clipping) and ``lr`` (of this step's update), and
    the bool ``params_finite`` (every updated parameter is finite; the loop's guard).
    """
    mix = {key: settings.augment[key] for key in data.MIX_KEYS}
    k = settings.accum_steps

    def step_fn(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        mix_key, drop_key = jax.random.split(key)
        images = data.augment_on_device(key, batch, settings.augment, settings.image_size)
        images, targets = data.mix_batch(
            mix_key, images, batch["label"], num_classes=settings.num_classes, **mix
        )

        def loss_fn(params):
            model = nnx.merge(settings.graphdef, params, state.rest, copy=True)
            with jax.sharding.use_abstract_mesh(settings.mesh.abstract_mesh):
                logits = model(images, rngs=nnx.Rngs(dropout=drop_key))  # [B, classes] float32
            loss = optax.softmax_cross_entropy(logits, targets).mean()
            loss = loss + model.penalty()  # e.g. the asymmetric parallel Mixer's L2 on W2
            return loss, (logits, nnx.state(model, nnx.Not(nnx.Param)))

        (loss, (logits, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = settings.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema_params
        if ema is not None:  # advances with the optimiser updates (every k steps)
            updated = (state.step + 1) % k == 0
            new_ema = optax.incremental_update(params, ema, step_size=1.0 - settings.ema_decay)
            ema = jax.tree.map(lambda n, o: jnp.where(updated, n, o), new_ema, ema)
        metrics = dict(
            loss=loss,
            accuracy=jnp.mean(jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32),
            grad_norm=optax.tree.norm(grads),
            lr=jnp.asarray(settings.schedule(state.step // k), jnp.float32),
            params_finite=jnp.all(
                jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)])
            ),
        )
        new_state = state.replace(
            step=state.step + 1, params=params, rest=rest, opt_state=opt_state, ema_params=ema
        )
        return new_state, metrics

    return jax.jit(
        step_fn,
        in_shardings=(settings.state_shardings, sharding.batch_sharding(settings.mesh)),
        out_shardings=(settings.state_shardings, replicated(settings.mesh)),
        donate_argnums=0,
    )


def make_eval_step(setup: EvalSetup) -> Callable[[nnx.State, nnx.State, dict], dict]:
    """Jitted ``(params, rest, batch) -> sums`` over the unmasked examples of a global batch
    ``{'image', 'label', 'mask': [B] bool}``: ``loss``, ``top1``, ``top5`` (correct counts),
    ``count``."""
    k = min(5, setup.config.model.num_classes)

    def eval_fn(params, rest, batch):
        with jax.sharding.use_abstract_mesh(setup.mesh.abstract_mesh):
            logits = nnx.merge(setup.eval_graphdef, params, rest)(batch["image"])
        labels, mask = batch["label"], batch["mask"]
        top = jax.lax.top_k(logits, k)[1]  # [B, k]
        per_example = dict(
            loss=optax.softmax_cross_entropy_with_integer_labels(logits, labels),
            top1=(top[:, 0] == labels).astype(jnp.float32),
            top5=jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32),
            count=jnp.ones(labels.shape, jnp.float32),
        )
        return {name: jnp.sum(jnp.where(mask, v, 0.0)) for name, v in per_example.items()}

    shardings = setup.state_shardings
    return jax.jit(
        eval_fn,
        in_shardings=(shardings.params, shardings.rest, sharding.batch_sharding(setup.mesh)),
        out_shardings=replicated(setup.mesh),
    )


def make_metrics_fn(setup: EvalSetup) -> Callable[[nnx.State, nnx.State], dict[str, Array]]:
    """Jitted scalars the model reports for the log (``model.training_metrics()``), keyed
    'train/<name>' (e.g. the iMLP's spectral-norm sigmas, 'train/sigma/<path>')."""

    def metrics(params, rest):
        model = nnx.merge(setup.eval_graphdef, params, rest)
        return {f"train/{name}": x for name, x in model.training_metrics().items()}

    return jax.jit(metrics, out_shardings=replicated(setup.mesh))
