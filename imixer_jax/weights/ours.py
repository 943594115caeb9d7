"""Our own weights file: a model's full state (parameters and spectral-norm u, v) as ``.npz``,
with the model's name and settings.

Keys are dotted per-block paths (``blocks.0.token_mixer.fc1.kernel``, whatever the model's block
layout), and the entry ``SETTINGS_KEY`` holds JSON ``{"name", "arch", "model"}``: the variant name
(or None) and the typed config's fields (``ModelConfig.to_dict``). Loading checks the settings
before the shapes: a model built with other settings (say ``n_iter=2`` for an ``n_iter=4``
checkpoint) is a one-line ``PretrainedError`` naming the fields, except for the settings that
do not change what the weights compute (``RUN_ONLY``). Nothing is unpickled (text entries are
numpy unicode arrays).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np
from flax import nnx

from imixer_jax.models import configs
from imixer_jax.models.configs import ModelConfig
from imixer_jax.weights.mapping import (
    PretrainedError,
    dotted,
    fill,
    flat_state,
    per_block,
    read_npz,
)

SETTINGS_KEY = "__imixer_jax__"
# Fields that change how a model is trained or laid out, not what its weights compute.
RUN_ONLY = (
    "drop_path_rate",
    "dtype",
    "scan_blocks",
    "remat",
    "adjoint",
    "asym_penalty",
)


def save(
    path: str,
    state: nnx.State | Mapping,
    config: ModelConfig,
    *,
    name: str | None = None,
) -> None:
    """Write ``state`` (``nnx.state(model)`` or its pure dict, either block layout) of a model of
    ``config`` (variant ``name``, if any) to ``path``."""
    flat, _ = per_block(flat_state(state))
    arrays = {dotted(p): np.asarray(v) for p, v in flat.items()}
    settings = {"name": name, "arch": config.arch, "model": config.to_dict()}
    with open(path, "wb") as f:  # np.savez would append '.npz' to a path without it
        np.savez(f, **arrays, **{SETTINGS_KEY: np.asarray(json.dumps(settings))})


def settings_of(entries: Mapping[str, np.ndarray], source: str) -> tuple[str | None, ModelConfig]:
    """``(name, config)`` of a file's ``SETTINGS_KEY`` entry.

    Raises:
      PretrainedError: the entry is missing or does not describe a model.
    """
    if SETTINGS_KEY not in entries:
        raise PretrainedError(
            f"{source} has no {SETTINGS_KEY!r} entry (model settings); write it with "
            "imixer_jax.weights.ours.save or the converter"
        )
    try:
        settings = json.loads(str(np.asarray(entries[SETTINGS_KEY])))
        return settings["name"], configs.from_dict(settings["arch"], settings["model"])
    except (ValueError, KeyError, TypeError) as e:
        raise PretrainedError(
            f"{source}: its model settings cannot be read ({' '.join(str(e).split())[:120]}); "
            "convert or save the weights again"
        ) from None


def check_settings(
    saved: ModelConfig, model: ModelConfig, *, source: str, name: str | None, ignore=()
) -> None:
    """Raise a one-line ``PretrainedError`` if ``model`` differs from the checkpoint's ``saved``
    settings in a field outside ``RUN_ONLY`` and ``ignore``."""
    label = f"{source} ({name or saved.arch})"
    if saved.arch != model.arch:
        raise PretrainedError(
            f"{label} holds a {saved.arch} model, not a {model.arch} one; build the model it holds"
        )
    ours, theirs = model.to_dict(), saved.to_dict()
    skip = set(RUN_ONLY) | set(ignore)
    diff = [k for k in theirs if k not in skip and theirs[k] != ours.get(k)]
    if diff:
        saved_text = ", ".join(f"{k}={theirs[k]!r}" for k in diff[:3])
        model_text = ", ".join(f"{k}={ours[k]!r}" for k in diff[:3])
        more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
        raise PretrainedError(
            f"{label} was saved with {saved_text}{more}, the model has {model_text}; build the "
            "model with the checkpoint's settings"
        )


def read(path: str) -> dict[str, np.ndarray]:
    """Every entry of our ``.npz`` at ``path`` (values read; nothing unpickled)."""
    return read_npz(path)


def load(
    entries: Mapping[str, np.ndarray],
    state: nnx.State,
    config: ModelConfig,
    *,
    source: str,
    ignore=(),
    check_only: bool = False,
) -> nnx.State | None:
    """``state`` (of a model of ``config``) filled from our file's ``entries``, settings first
    (see ``check_settings``; fields in ``ignore`` may differ), then every name and shape.
    ``check_only``: check only (``entries`` may be ``mapping.shape_only``), return None."""
    name, saved = settings_of(entries, source)
    check_settings(saved, config, source=source, name=name, ignore=ignore)
    arrays = {k: v for k, v in entries.items() if k != SETTINGS_KEY}
    return fill(state, arrays, dotted, source=source, check_only=check_only)


def load_into(model: nnx.Module, path: str) -> None:
    """Load our ``.npz`` at ``path`` (parameters and u, v) into ``model`` in place: settings,
    names and shapes checked (one-line ``PretrainedError``); the model may be abstract
    (``nnx.eval_shape``)."""
    if not os.path.isfile(path):
        raise PretrainedError(f"no weights file {path!r}; check the path")
    state = load(read(path), nnx.state(model), model.config, source=repr(path))
    nnx.update(model, state)
