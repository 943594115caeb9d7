"""Optimiser and learning-rate schedule (docs/recipe.md#schedule; timm conventions), from optax.

* AdamW with decoupled weight decay masked off every parameter with ``ndim <= 1`` (biases,
  LayerNorm scales; timm's ``param_groups_weight_decay``).
* Optional ``clip_by_global_norm`` before AdamW, optional gradient accumulation
  (``optax.MultiSteps``: k steps' gradients averaged, one update).
* Schedule over optimiser updates t (timm ``CosineLRScheduler``, ``warmup_prefix=False``):
  linear warm-up ``init_lr -> lr`` for ``warmup`` updates, then ``min_lr + (lr - min_lr) *
  (1 + cos(pi t / length)) / 2`` (the cosine keeps counting from t = 0, as timm), held at
  ``min_lr`` during the ``cooldown``. Choice: the schedule advances every update, not every epoch.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import optax

if TYPE_CHECKING:  # type hints only: imported without ml_collections
    import ml_collections


@dataclasses.dataclass(frozen=True)
class Plan:
    """Durations of a run in steps (global batches) and optimiser updates."""

    steps_per_epoch: int
    total_steps: int  # steps of the whole run (warm-up + cosine + cool-down), a multiple of k
    warmup_updates: int
    length_updates: int  # warm-up + cosine
    accum_steps: int  # k steps per optimiser update


def plan(config: ml_collections.ConfigDict, num_train: int) -> Plan:
    """Convert ``config.schedule`` durations (epochs or steps) for ``num_train`` examples."""
    steps_per_epoch = max(num_train // config.batch_size, 1)  # the last partial batch is dropped
    sch, k = config.schedule, config.optimizer.accum_steps
    unit = steps_per_epoch if sch.unit == "epochs" else 1

    def updates(duration: float) -> int:
        return round(duration * unit / k)

    length = max(updates(sch.length), 1)
    return Plan(
        steps_per_epoch=steps_per_epoch,
        total_steps=(length + updates(sch.cooldown)) * k,
        warmup_updates=updates(sch.warmup),
        length_updates=length,
        accum_steps=k,
    )


def learning_rate(config: ml_collections.ConfigDict, plan: Plan) -> optax.Schedule:
    """Learning rate as a function of the optimiser update count (see module docstring)."""
    peak, sch = config.optimizer.lr, config.schedule
    warmup = optax.linear_schedule(sch.init_lr, peak, max(plan.warmup_updates, 1))
    cosine = optax.cosine_decay_schedule(peak, plan.length_updates, alpha=sch.min_lr / peak)

    def schedule(count):
        return jnp.where(count < plan.warmup_updates, warmup(count), cosine(count))

    return schedule


def decay_mask(params):
    """True for parameters that get weight decay: those with ``ndim > 1`` (timm)."""
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def create(
    config: ml_collections.ConfigDict, plan: Plan
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """``(optimiser, schedule)`` of ``config.optimizer`` over the durations of ``plan``; the
    optimiser's update count drives the schedule."""
    opt, schedule = config.optimizer, learning_rate(config, plan)
    if opt.name == "sgd":  # the vit_jax fine-tuning recipe
        tx = optax.sgd(schedule, momentum=opt.momentum)
        if opt.weight_decay > 0:
            tx = optax.chain(optax.add_decayed_weights(opt.weight_decay, mask=decay_mask), tx)
    else:
        tx = optax.adamw(
            schedule,
            b1=opt.b1,
            b2=opt.b2,
            eps=opt.eps,
            weight_decay=opt.weight_decay,
            mask=decay_mask,
        )
    if opt.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
    if opt.accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=opt.accum_steps).gradient_transformation()
    return tx, schedule
