"""A training run's workdir as the trainer leaves it: its config, its model at a checkpoint,
and its evaluation images. Reading only: nothing is created in the workdir."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import ml_collections
import numpy as np
from flax import nnx

from imixer_jax import data, training
from imixer_jax.models.backbone import Backbone
from imixer_jax.training import checkpoint


@dataclasses.dataclass
class LoadedRun:
    """A run's config, its model (evaluation mode; its typed config is ``model.config``) at
    checkpoint ``step``, and its workdir."""

    config: ml_collections.ConfigDict
    model: Backbone
    step: int
    workdir: str


class RunError(ValueError):
    """A workdir that does not hold a readable run; the message is one line."""


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run was trained with (``workdir/config.json``, written by the trainer).

    Raises:
      RunError: the file is missing or is not valid JSON.
    """
    path = os.path.join(workdir, "config.json")
    try:
        with open(path) as f:
            fields = json.load(f)
    except FileNotFoundError as e:
        raise RunError(
            f"no {path}: {workdir} is not the workdir of a training run; pass one"
        ) from e
    except json.JSONDecodeError as e:
        raise RunError(
            f"{path} is not valid JSON ({e.msg}, line {e.lineno}); restore it or retrain"
        ) from e
    return ml_collections.ConfigDict(fields)


def has_checkpoint(workdir: str) -> bool:
    """Whether ``workdir`` holds a config and at least one complete checkpoint."""
    if not os.path.exists(os.path.join(workdir, "config.json")):
        return False
    try:
        ckpt = checkpoint.Checkpointer(workdir, read_only=True)  # creates nothing
    except FileNotFoundError:
        return False
    try:
        return ckpt.latest_step() is not None
    finally:
        ckpt.close()


def load_run(workdir: str, step: int | None = None) -> LoadedRun:
    """The model of checkpoint ``step`` (default: the newest) of the run in ``workdir``."""
    config = load_config(workdir)
    run = training.prepare(config)
    state = training.restore_state(run, workdir, step)
    model = nnx.merge(run.eval_graphdef, state.params, state.rest)
    model.eval()
    return LoadedRun(config=config, model=model, step=int(state.step), workdir=workdir)


def eval_images(config: ml_collections.ConfigDict, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` images ``[count, H, W, 3]`` and labels ``[count]`` of the run's
    evaluation split (count is capped by the split's size)."""
    info = data.dataset_info(
        config.data.name,
        data_dir=config.data.data_dir,
        train_split=config.data.train_split,
        eval_split=config.data.eval_split,
    )
    images, labels = [], []
    for batch in data.eval_batches(
        name=config.data.name,
        data_dir=config.data.data_dir,
        split=info.eval_split,
        image_size=config.model.img_size,
        global_batch_size=min(count, config.eval_batch_size),
        process_index=0,
        process_count=1,
        crop_ratio=config.data.crop_ratio,
    ):
        images.append(batch["image"][batch["mask"]])
        labels.append(batch["label"][batch["mask"]])
        if sum(len(x) for x in images) >= count:
            break
    return np.concatenate(images)[:count], np.concatenate(labels)[:count]


def accuracy(logits: np.ndarray, labels: Sequence[int]) -> float:
    """Top-1 accuracy of ``logits [B, classes]``."""
    return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(labels)))
