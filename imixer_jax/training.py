"""Training and evaluation library: ``train_and_evaluate(config, workdir)`` and
``evaluate_checkpoint(config, workdir, step)``, importable from a notebook.

Data flow: config -> ``prepare`` (validation, ``jax.distributed``, mesh, dataset facts, optimiser,
abstract model: everything that can fail does so here, before anything compiles) -> train state
created directly into its ``NamedSharding``s (``jax.eval_shape``, then ``jit(init,
out_shardings)``) or restored from the newest checkpoint -> jitted, donated train step over
``(state, global batch sharded on 'data')`` -> metrics / checkpoints / evaluation.

The model is held as ``graphdef, params, rest = nnx.split(model, nnx.Param, ...)``: ``params`` are
differentiated and updated by the optimiser; ``rest`` (spectral-norm power-iteration vectors) is
carried through the step and updated by the training-mode forward pass. Evaluation merges the same
state into the graphdef of ``model.eval()``. Every random draw of step s uses
``fold_in(root key, s)`` and the data pipeline yields batch s for any restart point, so a resumed
run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from imixer_jax import checkpointing, data, optim, sharding
from imixer_jax import config as config_lib
from imixer_jax.metrics import MetricWriter
from imixer_jax.models.mixer import Mixer
from imixer_jax.models.spectral_norm import spectral_sigmas

Array = jax.Array


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss); the message is one line."""


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs; a pytree of arrays.

    Attributes:
      step: int32 ``[]``, steps done = index of the next global batch (the data position).
      rng: uint32 key data of the root key; step s draws from ``fold_in(root, s)``.
      params: ``nnx.State`` of the model's ``Param``s.
      rest: ``nnx.State`` of the other model variables (spectral-norm u, v).
      opt_state: optax state of ``params``.
      ema_params: exponential moving average of ``params``, or None without EMA.
    """

    step: Array
    rng: Array
    params: nnx.State
    rest: nnx.State
    opt_state: optax.OptState
    ema_params: nnx.State | None


@dataclasses.dataclass(frozen=True)
class Run:
    """What ``prepare`` derives from a config; nothing here has been compiled."""

    config: ml_collections.ConfigDict
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


def _model(config: ml_collections.ConfigDict, key: Array) -> Mixer:
    return Mixer(**config.model.to_dict(), rngs=nnx.Rngs(params=key))


def prepare(config: ml_collections.ConfigDict) -> Run:
    """Validate ``config`` and derive everything needed to train or evaluate it.

    Raises (each with a one-line message, before any compilation):
      config_lib.ConfigError: invalid config, or a dataset that is not prepared (the message
        says how to prepare it) or does not fit (split, features).
    """
    config_lib.validate(config)
    if not jax.distributed.is_initialized():
        sharding.initialize_distributed(config)
    mesh_shape = config_lib.validate_devices(config, jax.device_count(), jax.process_count())
    try:  # not prepared (the message says how to prepare it), unknown split, not images, ...
        info = data.dataset_info(
            config.data.name,
            data_dir=config.data.data_dir,
            train_split=config.data.train_split,
            eval_split=config.data.eval_split,
        )
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise config_lib.ConfigError(f"config.data: {' '.join(str(e).split())}") from e
    if info.num_classes != config.model.num_classes:
        raise config_lib.ConfigError(
            f"config.model.num_classes: {config.model.num_classes} but dataset "
            f"{config.data.name!r} has {info.num_classes} classes"
        )
    mesh = sharding.create_mesh(mesh_shape, tuple(config.mesh.axes))
    plan = optim.plan(config, info.num_train)
    tx, schedule = optim.create(config, plan)

    model = nnx.eval_shape(lambda: _model(config, jax.random.key(0)))
    model.train()
    graphdef, _, _ = nnx.split(model, nnx.Param, ...)
    model.eval()
    eval_graphdef, _, _ = nnx.split(model, nnx.Param, ...)
    abstract = jax.eval_shape(lambda: _init(config, tx))
    shardings = sharding.tree_shardings(mesh, abstract)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
    )
    return Run(
        config=config,
        mesh=mesh,
        plan=plan,
        tx=tx,
        schedule=schedule,
        graphdef=graphdef,
        eval_graphdef=eval_graphdef,
        abstract_state=abstract,
        eval_split=info.eval_split,
    )


def _init(config: ml_collections.ConfigDict, tx: optax.GradientTransformation) -> TrainState:
    init_key, root = jax.random.split(jax.random.key(config.seed))  # root: the run's streams
    model = _model(config, init_key)
    model.train()
    _, params, rest = nnx.split(model, nnx.Param, ...)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        rng=jax.random.key_data(root),
        params=params,
        rest=rest,
        opt_state=tx.init(params),
        ema_params=params if config.optimizer.ema_decay > 0 else None,
    )


def init_state(run: Run) -> TrainState:
    """A fresh train state, created directly into its shardings."""
    init = jax.jit(lambda: _init(run.config, run.tx), out_shardings=run.state_shardings)
    # It runs once: XLA's backend (LLVM) optimisation would only add seconds of CPU compile time.
    return init.lower().compile({"xla_backend_optimization_level": 0})()


def _replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def make_train_step(run: Run) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Jitted ``(state, batch) -> (state, metrics)``; ``state`` is donated.

    ``batch``: global ``{'image': [B, H, W, 3] float32, 'label': [B] int32}`` on ``'data'``.
    ``metrics``: replicated float32 scalars ``loss`` (soft-target cross-entropy), ``accuracy``
    (on the hard labels), ``grad_norm`` (before clipping) and ``lr`` (of this step's update).
    """
    config, graphdef = run.config, run.graphdef
    num_classes = config.model.num_classes
    mix = {key: config.data.augment[key] for key in data.MIX_KEYS}
    k, ema_decay = config.optimizer.accum_steps, config.optimizer.ema_decay

    def step_fn(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        mix_key, drop_key = jax.random.split(key)
        images, targets = data.mix_batch(
            mix_key, batch["image"], batch["label"], num_classes=num_classes, **mix
        )

        def loss_fn(params):
            model = nnx.merge(graphdef, params, state.rest, copy=True)
            logits = model(images, rngs=nnx.Rngs(dropout=drop_key))  # [B, classes] float32
            loss = optax.softmax_cross_entropy(logits, targets).mean()
            return loss, (logits, nnx.state(model, nnx.Not(nnx.Param)))

        (loss, (logits, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = run.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema_params
        if ema is not None:  # advances with the optimiser updates (every k steps)
            updated = (state.step + 1) % k == 0
            new_ema = optax.incremental_update(params, ema, step_size=1.0 - ema_decay)
            ema = jax.tree.map(lambda n, o: jnp.where(updated, n, o), new_ema, ema)
        metrics = dict(
            loss=loss,
            accuracy=jnp.mean(jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32),
            grad_norm=optax.global_norm(grads),
            lr=jnp.asarray(run.schedule(state.step // k), jnp.float32),
        )
        new_state = state.replace(
            step=state.step + 1, params=params, rest=rest, opt_state=opt_state, ema_params=ema
        )
        return new_state, metrics

    return jax.jit(
        step_fn,
        in_shardings=(run.state_shardings, sharding.batch_sharding(run.mesh)),
        out_shardings=(run.state_shardings, _replicated(run.mesh)),
        donate_argnums=0,
    )


def make_eval_step(run: Run) -> Callable[[nnx.State, nnx.State, dict], dict]:
    """Jitted ``(params, rest, batch) -> sums`` over the unmasked examples of a global batch
    ``{'image', 'label', 'mask': [B] bool}``: ``loss``, ``top1``, ``top5`` (correct counts),
    ``count``."""
    k = min(5, run.config.model.num_classes)

    def eval_fn(params, rest, batch):
        logits = nnx.merge(run.eval_graphdef, params, rest)(batch["image"])
        labels, mask = batch["label"], batch["mask"]
        top = jax.lax.top_k(logits, k)[1]  # [B, k]
        per_example = dict(
            loss=optax.softmax_cross_entropy_with_integer_labels(logits, labels),
            top1=(top[:, 0] == labels).astype(jnp.float32),
            top5=jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32),
            count=jnp.ones(labels.shape, jnp.float32),
        )
        return {name: jnp.sum(jnp.where(mask, v, 0.0)) for name, v in per_example.items()}

    shardings = run.state_shardings
    return jax.jit(
        eval_fn,
        in_shardings=(shardings.params, shardings.rest, sharding.batch_sharding(run.mesh)),
        out_shardings=_replicated(run.mesh),
    )


def evaluate(run: Run, eval_step, params: nnx.State, rest: nnx.State) -> dict[str, float]:
    """``{'top1', 'top5', 'loss'}`` over one pass of the eval split (fractions, mean loss)."""
    config = run.config
    totals: dict[str, float] = {}
    for local in data.eval_batches(
        name=config.data.name,
        data_dir=config.data.data_dir,
        split=run.eval_split,
        image_size=config.model.img_size,
        global_batch_size=config.eval_batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        crop_ratio=config.data.crop_ratio,
    ):
        sums = jax.device_get(eval_step(params, rest, sharding.global_batch(run.mesh, local)))
        for name, value in sums.items():
            totals[name] = totals.get(name, 0.0) + float(value)
    count = max(totals.get("count", 0.0), 1.0)
    return {name: totals.get(name, 0.0) / count for name in ("top1", "top5", "loss")}


def _sigma_fn(run: Run) -> Callable[[nnx.State, nnx.State], dict[str, Array]]:
    """Jitted spectral-norm sigma of every iMLP layer, keyed 'train/sigma/<path>'."""

    def sigmas(params, rest):
        model = nnx.merge(run.eval_graphdef, params, rest)
        return {f"train/sigma/{path}": s for path, s in spectral_sigmas(model).items()}

    return jax.jit(sigmas, out_shardings=_replicated(run.mesh))


def _train_batches(run: Run, start_step: int) -> Iterator[dict]:
    """The pipeline from global batch ``start_step`` on; built before anything compiles, so that
    a bad augmentation setting fails first."""
    config = run.config
    try:
        return data.train_batches(
            name=config.data.name,
            data_dir=config.data.data_dir,
            split=config.data.train_split,
            image_size=config.model.img_size,
            global_batch_size=config.batch_size,
            seed=config.seed,
            start_step=start_step,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            augment=config.data.augment.to_dict(),
        )
    except ValueError as e:
        raise config_lib.ConfigError(f"config.data: {' '.join(str(e).split())}") from e


def _check_finite(rows: list[tuple[int, dict]], ckpt: checkpointing.Checkpointer) -> None:
    """Raise TrainingError at the first non-finite loss, after pending saves are complete."""
    for step, row in rows:
        if not math.isfinite(float(row["loss"])):
            ckpt.wait()
            latest = ckpt.latest_step()
            kept = (
                "no checkpoint had been saved"
                if latest is None
                else f"the last good checkpoint (step {latest}) in {ckpt.directory} is kept"
            )
            raise TrainingError(
                f"non-finite loss ({float(row['loss'])}) at step {step}: training stopped; "
                f"{kept}. Lower optimizer.lr or set optimizer.grad_clip_norm."
            )


def _format_eta(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _eval_all(run: Run, eval_step, state: TrainState) -> dict[str, float]:
    result = {f"test/{k}": v for k, v in evaluate(run, eval_step, state.params, state.rest).items()}
    if state.ema_params is not None:
        ema = evaluate(run, eval_step, state.ema_params, state.rest)
        result.update({f"test_ema/{k}": v for k, v in ema.items()})
    return result


def _save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Train ``config`` in ``workdir`` (resuming from its newest checkpoint) and evaluate.

    Writes ``workdir/config.json``, ``metrics.jsonl``, ``tensorboard/`` and ``checkpoints/``.

    Returns:
      Final metrics: ``step``, ``train/loss`` (last logged), ``test/top1``, ``test/top5``,
      ``test/loss`` (and ``test_ema/*`` with EMA), ``wall_time_s``.

    Raises:
      config_lib.ConfigError: before anything compiles (config, dataset, augmentation).
      TrainingError: non-finite loss; the last good checkpoint is kept.
    """
    start_time = time.time()
    run = prepare(config)
    config, plan = run.config, run.plan
    is_main = jax.process_index() == 0
    if is_main:
        _save_config(config, workdir)
    ckpt = checkpointing.Checkpointer(
        workdir, every_steps=config.checkpoint.every_steps, keep=config.checkpoint.keep
    )
    writer = MetricWriter(workdir, enabled=is_main)
    try:
        latest = ckpt.latest_step()
        start = 0 if latest is None else latest
        batches = _train_batches(run, start) if start < plan.total_steps else iter(())
        if latest is None:
            state = init_state(run)
        else:
            state = ckpt.restore(run.abstract_state)
            logging.info("resumed from the checkpoint of step %d in %s", start, ckpt.directory)
        logging.info(
            "%d steps (%d per epoch, batch %d, %d updates of %d steps), mesh %s",
            plan.total_steps,
            plan.steps_per_epoch,
            config.batch_size,
            plan.total_steps // plan.accum_steps,
            plan.accum_steps,
            dict(run.mesh.shape),
        )
        train_step, eval_step = make_train_step(run), make_eval_step(run)
        sigma_fn = _sigma_fn(run)
        result = _train_loop(
            run, state, start, batches, train_step, eval_step, sigma_fn, ckpt, writer
        )
    finally:
        ckpt.close()
        writer.close()
    result["wall_time_s"] = time.time() - start_time
    logging.info(
        "final: step %d, test top-1 %.2f%%, top-5 %.2f%%, loss %.4f, %.1f s",
        result["step"],
        100 * result["test/top1"],
        100 * result["test/top5"],
        result["test/loss"],
        result["wall_time_s"],
    )
    return result


def _train_scalars(window: list[dict], seconds: float, step: int, run: Run) -> dict[str, float]:
    """Scalars of one log window (host metrics of its steps, wall time): window means of loss,
    accuracy and gradient norm; the last lr; throughput; time per step; ETA."""
    step_time = seconds / len(window)
    scalars = {
        f"train/{name}": float(np.mean([row[name] for row in window]))
        for name in ("loss", "accuracy", "grad_norm")
    }
    scalars["train/lr"] = float(window[-1]["lr"])
    scalars["train/images_per_s"] = run.config.batch_size / step_time
    scalars["train/step_time_s"] = step_time
    scalars["train/eta_s"] = (run.plan.total_steps - step) * step_time
    return scalars


def _train_loop(
    run: Run,
    state: TrainState,
    start: int,
    batches: Iterator[dict],
    train_step,
    eval_step,
    sigma_fn,
    ckpt: checkpointing.Checkpointer,
    writer: MetricWriter,
) -> dict[str, float]:
    config, total = run.config, run.plan.total_steps
    pending: list[tuple[int, dict]] = []  # device metrics not yet checked on host
    window: list[dict] = []  # host metrics since the last log
    result: dict[str, float] = {}
    window_start = time.time()
    for step in range(start + 1, total + 1):  # step = steps done after this update
        state, metrics = train_step(state, sharding.global_batch(run.mesh, next(batches)))
        pending.append((step, metrics))
        log_now = step % config.log_every_steps == 0 or step == total
        save_now = ckpt.should_save(step) or step == total
        eval_now = step == total or (
            config.eval_every_steps > 0 and step % config.eval_every_steps == 0
        )
        if not (log_now or save_now or eval_now):
            continue
        rows = jax.device_get(pending)
        pending = []
        _check_finite(rows, ckpt)  # before a save: a bad state never replaces a good checkpoint
        window.extend(row for _, row in rows)
        if save_now:
            ckpt.save(step, state)
        if log_now:
            scalars = _train_scalars(window, time.time() - window_start, step, run)
            sigmas = jax.device_get(sigma_fn(state.params, state.rest))
            writer.write(step, {**scalars, **{k: float(v) for k, v in sigmas.items()}})
            logging.info(
                "step %d/%d  loss %.4f  acc %.3f  lr %.2e  |g| %.3f  %.0f img/s  %.1f ms/step  "
                "ETA %s",
                step,
                total,
                scalars["train/loss"],
                scalars["train/accuracy"],
                scalars["train/lr"],
                scalars["train/grad_norm"],
                scalars["train/images_per_s"],
                1000 * scalars["train/step_time_s"],
                _format_eta(scalars["train/eta_s"]),
            )
            result["train/loss"] = scalars["train/loss"]
            window = []
            window_start = time.time()
        if eval_now:
            result.update(_eval_and_log(run, eval_step, state, step, writer))
            window_start = time.time()  # evaluation time is not training time
    if start >= total:  # already complete: evaluate the final checkpoint again
        result.update(_eval_and_log(run, eval_step, state, total, writer))
    result["step"] = total
    return result


def _eval_and_log(run: Run, eval_step, state: TrainState, step: int, writer) -> dict[str, float]:
    scalars = _eval_all(run, eval_step, state)
    writer.write(step, scalars)
    logging.info("step %d  %s", step, "  ".join(f"{k} {v:.4f}" for k, v in scalars.items()))
    return scalars


def restore_state(run: Run, workdir: str, step: int | None = None) -> TrainState:
    """Train state of checkpoint ``step`` (default: the newest) in ``workdir``, placed in the
    run's shardings.

    Raises:
      FileNotFoundError: no such checkpoint.
      checkpointing.CheckpointError: it does not fit ``run``'s train state, or is damaged.
    """
    config = run.config
    ckpt = checkpointing.Checkpointer(
        workdir, every_steps=config.checkpoint.every_steps, keep=config.checkpoint.keep
    )
    try:
        return ckpt.restore(run.abstract_state, step)
    finally:
        ckpt.close()


def evaluate_checkpoint(
    config: ml_collections.ConfigDict, workdir: str, step: int | None = None
) -> dict[str, float]:
    """``{'step', 'test/top1', 'test/top5', 'test/loss'}`` (and ``test_ema/*``) of checkpoint
    ``step`` (default: the newest) in ``workdir``."""
    run = prepare(config)
    state = restore_state(run, workdir, step)
    result = {"step": int(state.step), **_eval_all(run, make_eval_step(run), state)}
    logging.info(
        "checkpoint %d: test top-1 %.2f%%, top-5 %.2f%%, loss %.4f",
        result["step"],
        100 * result["test/top1"],
        100 * result["test/top5"],
        result["test/loss"],
    )
    return result
