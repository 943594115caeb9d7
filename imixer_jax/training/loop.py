"""``train_and_evaluate(config, workdir)``: the training loop with logging, checkpoints and
evaluation; it resumes from the newest intact checkpoint in ``workdir``.

What the loop guarantees: one trainer per workdir (``lock.py``); nothing it writes is reached
through a symbolic link, and a resume whose config changes the training is refused unless allowed
(``workdir.py``; ``config.json`` is written only once the resume has been accepted, its history
kept); a workdir whose checkpoints are all damaged is not restarted from step 0 unless asked; a
state with a non-finite loss, gradient norm or parameter is never saved; a failed save or metrics
write stops the run with one line and keeps the previous checkpoint; SIGTERM / SIGINT save and end
the run normally (``preemption.py``), the metrics of the unlogged steps carried in the checkpoint,
so that a resumed run logs what an uninterrupted one does.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from imixer_jax import data
from imixer_jax.training import checkpoint, sharding
from imixer_jax.training import config as config_lib
from imixer_jax.training import workdir as workdir_lib
from imixer_jax.training.checkpoint.lock import WorkdirLock
from imixer_jax.training.checkpoint.preemption import StopRequest
from imixer_jax.training.errors import TrainingError
from imixer_jax.training.evaluation import evaluate_state
from imixer_jax.training.logging.writer import METRICS_FILE, MetricWriter
from imixer_jax.training.progress import Progress
from imixer_jax.training.state import Setup, TrainState, init_state, prepare
from imixer_jax.training.steps import make_eval_step, make_metrics_fn, make_train_step
from imixer_jax.training.summary import parameter_overview
from imixer_jax.weights import formats as weights_formats

CONFIG_FILE = workdir_lib.CONFIG_FILE
PARAMETERS_FILE = "parameters.txt"


def _train_batches(setup: Setup, start_step: int) -> Iterator[dict]:
    """The pipeline from global batch ``start_step`` on; built before anything compiles, so that
    a bad augmentation setting fails first."""
    config = setup.config
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


_GUARDED = (("loss", "loss"), ("grad_norm", "gradient norm"))


def _check_finite(rows: list[tuple[int, dict]], ckpt: checkpoint.Checkpointer) -> None:
    """Raise TrainingError at the first step whose loss, gradient norm or updated parameters are
    not finite, after pending saves are complete (so that the message names the kept one)."""
    for step, row in rows:
        bad = [f"{label} ({float(row[key])})" for key, label in _GUARDED]
        bad = [b for b, (key, _) in zip(bad, _GUARDED) if not math.isfinite(float(row[key]))]
        if not row["params_finite"]:
            bad.append("updated parameters")
        if bad:
            ckpt.wait()
            latest = ckpt.latest_step()
            kept = (
                "no checkpoint had been saved"
                if latest is None
                else f"the last good checkpoint (step {latest}) in {ckpt.directory} is kept"
            )
            raise TrainingError(
                f"non-finite {', '.join(bad)} at step {step}: training stopped; {kept}. "
                f"Lower optimizer.lr or set optimizer.grad_clip_norm."
            )


def _format_eta(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _closing(ckpt: checkpoint.Checkpointer):
    """An ``ExitStack.push`` callback that closes ``ckpt``. When an error already ends the run,
    a failure of the close (a pending save on the same full disk) does not replace it."""

    def close(exc_type, exc, tb) -> bool:
        try:
            ckpt.close()
        except checkpoint.CheckpointError:
            if exc is None:
                raise
        return False

    return close


def _write_file(workdir: str, name: str, text: str) -> str:
    """Write ``workdir/name`` atomically (a full disk leaves the previous one); returns its
    path."""
    path = os.path.join(workdir, name)
    try:
        with os.fdopen(workdir_lib.open_for_writing(path + ".tmp"), "w") as f:
            f.write(text if text.endswith("\n") else text + "\n")
        os.replace(path + ".tmp", path)
    except OSError as e:
        raise TrainingError(
            f"writing {path} failed ({e.strerror}); free disk space or fix the workdir's "
            f"permissions and rerun"
        ) from e
    return path


def _outputs(workdir: str, ckpt: checkpoint.Checkpointer) -> str:
    """Where a run's files are and how to look at them (logged at its end)."""
    steps = ", ".join(str(s) for s in ckpt.all_steps()) or "none"
    rows = [
        (CONFIG_FILE, "the config of this run"),
        (METRICS_FILE, "train and test metrics, one JSON object per logged step"),
        (
            "tensorboard/",
            f"view with: tensorboard --logdir {os.path.join(workdir, 'tensorboard')} "
            "(pip install -e '.[tensorboard]')",
        ),
        (
            "checkpoints/",
            f"steps {steps}; evaluate with: python -m imixer_jax.evaluate --workdir {workdir}",
        ),
        (PARAMETERS_FILE, "every parameter array: path, shape, size, sharding"),
        (
            "analysis/",
            f"plots (training curves, residuals, energies) with: python -m imixer_jax.analyze "
            f"--workdir {workdir} (pip install -e '.[plot]')",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    return f"outputs in {workdir}:\n" + "\n".join(
        f"  {name.ljust(width)}  {what}" for name, what in rows
    )


def _fresh_start(workdir: str, restart_damaged: bool) -> str:
    """Allow a start from step 0 (returns the reason recorded in the config history): refused
    while the checkpoints of a damaged run are set aside in the workdir, unless
    ``restart_damaged``, which sets the run's ``metrics.jsonl`` aside with them.

    Raises:
      checkpoint.CheckpointError: a damaged run and no ``restart_damaged``; one line.
    """
    damaged = os.path.join(workdir, workdir_lib.DAMAGED_DIR)
    if not (os.path.isdir(damaged) and os.listdir(damaged)):
        return "start"
    if not restart_damaged:
        raise checkpoint.CheckpointError(
            f"{workdir} has no intact checkpoint, only the damaged ones in {damaged}; train with "
            "--restart_damaged to start again from step 0 (its metrics are kept there), or use a "
            "new workdir"
        )
    metrics = os.path.join(workdir, workdir_lib.METRICS_FILE)
    if os.path.exists(metrics):
        target = os.path.join(damaged, workdir_lib.METRICS_FILE)
        while os.path.lexists(target):
            target += ".old"
        shutil.move(metrics, target)
        logging.warning(
            "every checkpoint was damaged: training from step 0, %s kept as %s", metrics, target
        )
    return "restart: every checkpoint was damaged"


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    allow_config_change: Sequence[str] = (),
    restart_damaged: bool = False,
) -> dict[str, float]:
    """Train ``config`` in ``workdir`` (resuming from its newest checkpoint) and evaluate.

    Writes ``workdir/config.json`` (and ``config_history.jsonl``), ``parameters.txt``,
    ``metrics.jsonl``, ``tensorboard/`` and ``checkpoints/``, and logs where they are at the end.
    A run whose last step is trained and evaluated already says so and returns its logged final
    metrics.

    Args:
      allow_config_change: keys (or sections, e.g. ``'schedule'``) whose values may differ from
        the config the checkpoints were trained with; the change is recorded.
      restart_damaged: when every checkpoint is damaged, set them (and ``metrics.jsonl``) aside
        in ``DIR/damaged_checkpoints`` and train from step 0.

    Returns:
      Final metrics: ``step``, ``train/loss`` (last logged), ``test/top1``, ``test/top5``,
      ``test/loss`` (and ``test_ema/*`` with EMA), ``wall_time_s``. After SIGTERM / SIGINT:
      ``step`` (of the checkpoint saved), ``preempted`` (1.0) and ``wall_time_s``.

    Raises (each with a one-line message):
      config_lib.ConfigError: before anything compiles (config, dataset, augmentation,
        init_from).
      TrainingError: a file of the workdir is a symbolic link (nothing is created);
        non-finite values (the last good checkpoint is kept); a file cannot be written.
      lock.WorkdirBusyError: another trainer uses ``workdir``.
      workdir.ConfigChangedError: the resume changes keys that are not allowed.
      checkpoint.CheckpointError: the newest checkpoint does not fit ``config``, every
        checkpoint is damaged, or a save failed (the previous checkpoint is kept).
    """
    start_time = time.time()
    setup = prepare(config)
    config, plan = setup.config, setup.plan
    is_main = jax.process_index() == 0
    workdir_lib.check_no_links(workdir)
    with contextlib.ExitStack() as stack:
        if is_main:
            stack.enter_context(WorkdirLock(workdir))
        ckpt = checkpoint.Checkpointer(
            workdir, every_steps=config.checkpoint.every_steps, keep=config.checkpoint.keep
        )
        stack.push(_closing(ckpt))
        latest, state, carried = ckpt.restore_newest_intact(
            setup.abstract_state, set_aside=is_main, restart=restart_damaged
        )
        start = 0 if latest is None else latest
        if latest is None:
            reason = _fresh_start(workdir, restart_damaged) if is_main else "start"
            changes = {}
        else:
            changes = workdir_lib.check_resume(config, workdir, allow_config_change)
            reason = "resume with " + ",".join(changes) if changes else "resume"
        batches = _train_batches(setup, start) if start < plan.total_steps else iter(())
        if state is None:
            state = _pretrained(setup, init_state(setup))
        else:
            logging.info("resumed from the checkpoint of step %d in %s", start, ckpt.directory)
        if is_main:  # only now: a rejected resume leaves the config.json of the checkpoints
            workdir_lib.record_config(config, workdir, start, changes, reason)
        writer = MetricWriter(workdir, enabled=is_main, resume_step=start)
        stack.callback(writer.close)
        logging.info(
            "%d steps (%d per epoch, batch %d, %d updates of %d steps), mesh %s",
            plan.total_steps,
            plan.steps_per_epoch,
            config.batch_size,
            plan.total_steps // plan.accum_steps,
            plan.accum_steps,
            dict(setup.mesh.shape),
        )
        table = parameter_overview(state.params)
        if is_main:
            path = _write_file(workdir, PARAMETERS_FILE, table)
            logging.info("%s (table: %s)", table.rsplit("\n", 1)[-1], path)
        config_text = config.to_json_best_effort(indent=2, sort_keys=True)
        writer.write_text("config", config_text, step=start + 1)  # the config from this step on
        window = _uncarry(carried.get("window", []))
        result = _Loop(setup, ckpt, writer, workdir).run(state, start, batches, window)
        ckpt.wait()
        outputs = _outputs(workdir, ckpt)
    result["wall_time_s"] = time.time() - start_time
    if "preempted" in result:
        return result
    if "test/top1" in result:
        logging.info(
            "final: step %d, test top-1 %.2f%%, top-5 %.2f%%, loss %.4f, %.1f s",
            result["step"],
            100 * result["test/top1"],
            100 * result["test/top5"],
            result["test/loss"],
            result["wall_time_s"],
        )
    if is_main:
        logging.info("%s", outputs)
    return result


def _train_scalars(window: list[dict]) -> dict[str, float]:
    """Window means of loss, accuracy and gradient norm over the host metrics of a log window;
    the last lr."""
    scalars = {
        f"train/{name}": float(np.mean([row[name] for row in window]))
        for name in ("loss", "accuracy", "grad_norm")
    }
    scalars["train/lr"] = float(window[-1]["lr"])
    return scalars


_CARRIED_KEYS = ("loss", "accuracy", "grad_norm", "lr")  # what ``_train_scalars`` reads


def _carry(window: list[dict]) -> list[dict[str, float]]:
    """The host metrics of a log window as JSON (float32 values are exact as Python floats)."""
    return [{key: float(row[key]) for key in _CARRIED_KEYS} for row in window]


def _uncarry(rows: list[dict[str, float]]) -> list[dict]:
    """``_carry``'s rows as the float32 values the train step returned."""
    return [{key: np.float32(value) for key, value in row.items()} for row in rows]


class _Loop:
    """The steps of one run with their compiled functions, checkpointer and metric writer."""

    def __init__(
        self, setup: Setup, ckpt: checkpoint.Checkpointer, writer: MetricWriter, workdir: str
    ) -> None:
        self.setup, self.ckpt, self.writer = setup, ckpt, writer
        self.train_step, self.eval_step = make_train_step(setup), make_eval_step(setup)
        self.metrics_fn = make_metrics_fn(setup)
        self.progress = Progress(setup.plan.total_steps, setup.config.batch_size)
        self.profile_dir = os.path.join(workdir, "profile")

    def _profile(self, step: int, start: int, metrics: dict) -> None:
        """Trace steps ``start + 2 ..= start + 1 + profile_steps`` (``config.profile_steps``)."""
        n = self.setup.config.profile_steps
        if n and step == start + 1:
            jax.profiler.start_trace(self.profile_dir)
        if n and step == start + 1 + n:
            jax.block_until_ready(metrics)
            jax.profiler.stop_trace()
            logging.info("profile of steps %d-%d written to %s", start + 2, step, self.profile_dir)

    def run(
        self, state: TrainState, start: int, batches: Iterator[dict], window: list[dict]
    ) -> dict[str, float]:
        """Train from step ``start`` to the end; ``batches`` yields global batch ``start`` on;
        ``window``: the host metrics of the steps after the last log (carried by the checkpoint
        of step ``start``)."""
        setup, ckpt = self.setup, self.ckpt
        config, total = setup.config, setup.plan.total_steps
        pending: list[tuple[int, dict]] = []  # device metrics not yet checked on host
        result: dict[str, float] = {}
        progress = self.progress
        with StopRequest(ckpt.reached_preemption) as stop:
            for step in range(start + 1, total + 1):  # step = steps done after this update
                waited = time.time()
                batch = sharding.global_batch(setup.mesh, next(batches))
                progress.data_wait(time.time() - waited)
                state, metrics = self.train_step(state, batch)
                pending.append((step, metrics))
                if step == start + 1:  # it compiled: time the steps after it
                    jax.block_until_ready(metrics)
                    progress.restart()
                else:
                    progress.step()
                self._profile(step, start, metrics)
                stopping = stop(step)
                log_now = step % config.log_every_steps == 0 or step == total
                save_now = ckpt.should_save(step) or step == total or stopping
                eval_now = step == total or (
                    config.eval_every_steps > 0 and step % config.eval_every_steps == 0
                )
                if not (log_now or save_now or eval_now):
                    continue
                rows = jax.device_get(pending)
                pending = []
                _check_finite(rows, ckpt)  # before a save: a bad state never replaces a good one
                window.extend(row for _, row in rows)
                if save_now:
                    saving = time.time()
                    ckpt.save(step, state, {"window": [] if log_now else _carry(window)})
                    progress.exclude(time.time() - saving)  # saving is not training time
                if log_now:
                    result["train/loss"] = self._log(state, step, window)
                    window = []
                if stopping:
                    ckpt.wait()
                    logging.warning(
                        "%s: saved the checkpoint of step %d in %s and stopped; rerun the same "
                        "command to resume",
                        stop.signal,
                        step,
                        ckpt.directory,
                    )
                    return {**result, "step": step, "preempted": 1.0}
                if eval_now:
                    result.update(self._evaluate(state, step))
                    progress.restart()  # evaluation time is not training time
        if start >= total:
            result.update(self._complete(state))
        result["step"] = total
        return result

    def _complete(self, state: TrainState) -> dict[str, float]:
        """A run restarted after its last step: its logged final metrics, or (final save done,
        final evaluation not logged) the evaluation of the last checkpoint."""
        total = self.setup.plan.total_steps
        final = self.writer.final(total)
        if jax.process_count() > 1:  # every process must take the same branch (collectives)
            logged = multihost_utils.broadcast_one_to_all(np.asarray(final is not None))
            final = (final or {}) if bool(logged) else None
        if final is None:
            logging.info("all %d steps trained; evaluating the final checkpoint", total)
            return self._evaluate(state, total)
        logging.info(
            "run complete: all %d steps trained and evaluated in %s; nothing to do (delete the "
            "workdir or pass another one to train again)",
            total,
            os.path.dirname(self.ckpt.directory),
        )
        return final

    def _log(self, state: TrainState, step: int, window: list[dict]) -> float:
        """Write and log the scalars of a window; returns its mean loss."""
        scalars = {**_train_scalars(window), **self.progress.report(step)}
        reported = jax.device_get(self.metrics_fn(state.params, state.rest))
        self.writer.write(step, {**scalars, **{k: float(v) for k, v in reported.items()}})
        if "train/step_time_s" in scalars:
            timing = (
                f"{scalars['train/images_per_s']:.0f} img/s  "
                f"{1000 * scalars['train/step_time_s']:.1f} ms/step "
                f"({1000 * scalars['train/data_wait_s']:.1f} data)  "
                f"ETA {_format_eta(scalars['train/eta_s'])}"
            )
        else:
            timing = "compiled; ETA after the next log"
        logging.info(
            "step %d/%d  loss %.4f  acc %.3f  lr %.2e  |g| %.3f  %s",
            step,
            self.setup.plan.total_steps,
            scalars["train/loss"],
            scalars["train/accuracy"],
            scalars["train/lr"],
            scalars["train/grad_norm"],
            timing,
        )
        return scalars["train/loss"]

    def _evaluate(self, state: TrainState, step: int, write: bool = True) -> dict[str, float]:
        scalars = evaluate_state(self.setup, self.eval_step, state)
        if write:
            self.writer.write(step, scalars)
        logging.info("step %d  %s", step, "  ".join(f"{k} {v:.4f}" for k, v in scalars.items()))
        return scalars


def _pretrained(setup: Setup, state: TrainState) -> TrainState:
    """A fresh state with the weights of ``config.init_from`` (parameters and spectral-norm u, v;
    unchanged without one); the optimiser state does not depend on the parameter values, so it
    stays valid."""
    init_from = config_lib.init_from(setup.config)
    if init_from is None:
        return state
    params, rest = weights_formats.apply_init(
        init_from, setup.model_config, state.params, state.rest
    )
    shardings = setup.state_shardings
    params = jax.device_put(params, shardings.params)
    rest = jax.device_put(rest, shardings.rest)
    ema = None if state.ema_params is None else params
    logging.info("weights initialised from %s", init_from.path)
    return state.replace(params=params, rest=rest, ema_params=ema)
