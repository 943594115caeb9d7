"""Evaluation over the eval split, and of a saved checkpoint."""

from __future__ import annotations

import jax
import ml_collections
from absl import logging
from flax import nnx

from imixer_jax import data
from imixer_jax.training import checkpoint, sharding
from imixer_jax.training.state import Setup, prepare
from imixer_jax.training.steps import make_eval_step
from imixer_jax.training.train_state import TrainState


def evaluate(setup: Setup, eval_step, params: nnx.State, rest: nnx.State) -> dict[str, float]:
    """``{'top1', 'top5', 'loss'}`` over one pass of the eval split (fractions, mean loss)."""
    config = setup.config
    totals: dict[str, float] = {}
    for local in data.eval_batches(
        name=config.data.name,
        data_dir=config.data.data_dir,
        split=setup.eval_split,
        image_size=config.model.img_size,
        global_batch_size=config.eval_batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        crop_ratio=config.data.crop_ratio,
    ):
        sums = jax.device_get(eval_step(params, rest, sharding.global_batch(setup.mesh, local)))
        for name, value in sums.items():
            totals[name] = totals.get(name, 0.0) + float(value)
    count = max(totals.get("count", 0.0), 1.0)
    return {name: totals.get(name, 0.0) / count for name in ("top1", "top5", "loss")}


def evaluate_state(setup: Setup, eval_step, state: TrainState) -> dict[str, float]:
    """``test/*`` of the parameters (and ``test_ema/*`` of their EMA, if any)."""
    params, rest = state.params, state.rest
    result = {f"test/{k}": v for k, v in evaluate(setup, eval_step, params, rest).items()}
    if state.ema_params is not None:
        ema = evaluate(setup, eval_step, state.ema_params, rest)
        result.update({f"test_ema/{k}": v for k, v in ema.items()})
    return result


def restore_state(setup: Setup, workdir: str, step: int | None = None) -> TrainState:
    """Train state of checkpoint ``step`` (default: the newest intact one; a damaged newer one
    gets a warning line) in ``workdir``, placed in the setup's shardings. Reads only: creates,
    moves and deletes nothing.

    Raises:
      FileNotFoundError: no such checkpoint.
      checkpoint.CheckpointError: it does not fit ``setup``'s train state, or is damaged.
    """
    ckpt = checkpoint.Checkpointer(workdir, read_only=True)
    try:
        if step is not None:
            return ckpt.restore(setup.abstract_state, step)
        _, state, _ = ckpt.restore_newest_intact(setup.abstract_state, set_aside=False)
        if state is None:
            raise FileNotFoundError(f"no checkpoint in {ckpt.directory}")
        return state
    finally:
        ckpt.close()


def evaluate_checkpoint(
    config: ml_collections.ConfigDict, workdir: str, step: int | None = None
) -> dict[str, float]:
    """``{'step', 'test/top1', 'test/top5', 'test/loss'}`` (and ``test_ema/*``) of checkpoint
    ``step`` (default: the newest) in ``workdir``."""
    setup = prepare(config)
    state = restore_state(setup, workdir, step)
    result = {"step": int(state.step), **evaluate_state(setup, make_eval_step(setup), state)}
    logging.info(
        "checkpoint %d: test top-1 %.2f%%, top-5 %.2f%%, loss %.4f",
        result["step"],
        100 * result["test/top1"],
        100 * result["test/top5"],
        result["test/loss"],
    )
    return result
