"""Google's public MLP-Mixer checkpoints (vision_transformer / big_vision ``.npz``) -> ``mixer_*``.

The ``.npz`` files (e.g. ``Mixer-B_16.npz``, ``Mixer-B_32.npz``, ``Mixer-L_16.npz``) hold the flat
parameters of vit_jax's Linen ``MlpMixer``, keys joined by ``'/'``::

    stem/{kernel [P, P, 3, D], bias [D]}
    MixerBlock_i/LayerNorm_0/{scale, bias} [D]            -> blocks.i.token_mixer.norm
    MixerBlock_i/token_mixing/Dense_0/{kernel [S, T], bias} -> blocks.i.token_mixer.fc1
    MixerBlock_i/token_mixing/Dense_1/{kernel [T, S], bias} -> blocks.i.token_mixer.fc2
    MixerBlock_i/LayerNorm_1/{scale, bias} [D]            -> blocks.i.norm
    MixerBlock_i/channel_mixing/Dense_0/{kernel [D, C], bias} -> blocks.i.channel_mlp.fc_c1
    MixerBlock_i/channel_mixing/Dense_1/{kernel [C, D], bias} -> blocks.i.channel_mlp.fc_c2
    pre_head_layer_norm/{scale, bias} [D]                 -> norm
    head/{kernel [D, classes], bias [classes]}            -> head

Both sides are Flax, so every array keeps its layout. big_vision checkpoints that prefix the
parameters with ``params/`` are accepted too. The models compute the exact (erf) GELU of the
official iMixer and of timm, where vit_jax's Mixer uses the tanh approximation; the two differ by
at most 4.8e-4 per activation (see docs/recipe.md#finetune).

``from_vit_jax(flat, params)`` is a pure function on the flat dict and the model's
``nnx.State`` of ``nnx.Param``; ``apply_init(config, params)`` is the trainer's hook for
``config.init_from``.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx, traverse_util

FORMATS = ("vit_jax",)
HEADS = ("auto", "keep", "zero")
_BIG_VISION_PREFIX = "params/"

Path = tuple


class PretrainedError(ValueError):
    """A checkpoint that does not fit the model; the message is one line."""


def load_npz(path: str) -> dict[str, np.ndarray]:
    """The flat ``{'a/b/kernel': array}`` dict of a vit_jax / big_vision ``.npz`` file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no checkpoint at {path!r}: download e.g. Mixer-B_16.npz from the public "
            "mixer_models bucket of google-research/vision_transformer and pass its path"
        )
    fix = "pass a vit_jax Mixer .npz such as Mixer-B_16.npz"
    if not zipfile.is_zipfile(path):  # np.load would try to unpickle it (and refuse)
        raise PretrainedError(f"{path} is not a .npz archive (not a zip file); {fix}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        cause = " ".join(str(e).split())[:80]
        raise PretrainedError(f"{path} is not a .npz archive of arrays ({cause}); {fix}") from e


def vit_jax_names(num_blocks: int) -> dict[Path, str]:
    """Our parameter path (as in ``nnx.State.to_pure_dict``) -> the vit_jax ``.npz`` key."""
    names: dict[Path, str] = {}

    def dense(ours: Path, theirs: str, leaves=("kernel", "bias")) -> None:
        for leaf in leaves:
            names[(*ours, leaf)] = f"{theirs}/{leaf}"

    dense(("stem",), "stem")
    for i in range(num_blocks):
        block, theirs = ("blocks", i), f"MixerBlock_{i}"
        dense((*block, "token_mixer", "norm"), f"{theirs}/LayerNorm_0", ("scale", "bias"))
        dense((*block, "token_mixer", "fc1"), f"{theirs}/token_mixing/Dense_0")
        dense((*block, "token_mixer", "fc2"), f"{theirs}/token_mixing/Dense_1")
        dense((*block, "norm"), f"{theirs}/LayerNorm_1", ("scale", "bias"))
        dense((*block, "channel_mlp", "fc_c1"), f"{theirs}/channel_mixing/Dense_0")
        dense((*block, "channel_mlp", "fc_c2"), f"{theirs}/channel_mixing/Dense_1")
    dense(("norm",), "pre_head_layer_norm", ("scale", "bias"))
    dense(("head",), "head")
    return names


def assign(
    params: nnx.State,
    flat: Mapping[str, np.ndarray],
    names: Mapping[Path, str],
    *,
    source: str,
    transforms: Mapping[Path, Callable[[np.ndarray], np.ndarray]] | None = None,
) -> nnx.State:
    """Copy of ``params`` whose leaves at ``names`` are ``flat[names[path]]`` (after
    ``transforms[path]``, e.g. a transpose), cast to the leaf's dtype.

    Every leaf of ``params`` must be named and every key of ``flat`` used; each mismatch raises
    a one-line ``PretrainedError`` naming both sides. ``params`` itself is not modified.
    """
    transforms = transforms or {}
    target = traverse_util.flatten_dict(nnx.to_pure_dict(params))
    unnamed = [p for p in target if p not in names]
    if unnamed:
        raise PretrainedError(
            f"model parameter {_dotted(unnamed[0])} has no counterpart in a {source} checkpoint: "
            "build the model the checkpoint was trained as"
        )
    unused = sorted(set(flat) - {names[p] for p in target if p in names})
    if unused:
        raise PretrainedError(
            f"{source} checkpoint entry {unused[0]!r} has no place in this model: build the model "
            "the checkpoint was trained as (same variant, token mixer and num_blocks)"
        )
    out = {}
    for path, old in target.items():
        key = names[path]
        if key not in flat:
            raise PretrainedError(
                f"{source} checkpoint lacks {key!r} (for {_dotted(path)}): is it a complete "
                "checkpoint of this architecture?"
            )
        value = np.asarray(flat[key])
        value = transforms.get(path, lambda a: a)(value)
        if value.shape != old.shape:
            raise PretrainedError(
                f"{source} checkpoint entry {key!r} has shape {tuple(value.shape)} but "
                f"{_dotted(path)} has {tuple(old.shape)}: build the model with the checkpoint's "
                "num_classes, img_size, patch_size and widths"
            )
        out[path] = jnp.asarray(value, dtype=old.dtype)
    new = jax.tree.map(lambda x: x, params)  # a new State: ``params`` is left as it was
    nnx.replace_by_pure_dict(new, traverse_util.unflatten_dict(out))
    return new


def from_vit_jax(
    flat: Mapping[str, np.ndarray], params: nnx.State, *, head: str = "auto"
) -> nnx.State:
    """``params`` (a ``mixer_*`` model's ``nnx.state(model, nnx.Param)``) with the weights of a
    vit_jax / big_vision Mixer checkpoint ``flat``.

    ``head``: ``'keep'`` loads the checkpoint's classifier (class counts must match), ``'zero'``
    gives a new zero head of the model's class count (vit_jax's fine-tuning), ``'auto'`` keeps it
    when the shapes match and zeroes it otherwise.

    Raises:
      PretrainedError: one line naming the first entry that does not fit.
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}; got {head!r}")
    nested = [key for key in flat if "/" in key]
    if nested and all(key.startswith(_BIG_VISION_PREFIX) for key in nested):
        flat = {k.removeprefix(_BIG_VISION_PREFIX): v for k, v in flat.items()}
    pure = nnx.to_pure_dict(params)
    if "token_mixer" not in pure.get("blocks", {0: {}}).get(0, {}):
        raise PretrainedError("vit_jax checkpoints need a mixer_* model (blocks with token_mixer)")
    num_blocks = len(pure["blocks"])
    names = vit_jax_names(num_blocks)
    known = set(vit_jax_names(1).values())
    if not any(re.sub(r"MixerBlock_\d+", "MixerBlock_0", key) in known for key in flat):
        entries = ", ".join(repr(key) for key in sorted(flat)[:3]) or "none"
        raise PretrainedError(
            f"the checkpoint holds no vit_jax Mixer parameter (entries: {entries}): pass a "
            "vit_jax / big_vision Mixer .npz such as Mixer-B_16.npz"
        )
    head_shape = tuple(pure["head"]["kernel"].shape)
    theirs = tuple(np.shape(flat.get("head/kernel", ())))
    if head == "keep" and theirs != head_shape:
        raise PretrainedError(
            f"checkpoint head/kernel has shape {theirs}, the model's head {head_shape}: use "
            "head='zero' (a new zero head) or build the model with the checkpoint's num_classes"
        )
    if head == "zero" or (head == "auto" and theirs != head_shape):
        flat = dict(flat)
        for leaf in ("kernel", "bias"):
            flat[f"head/{leaf}"] = np.zeros(pure["head"][leaf].shape, np.float32)
    return assign(params, flat, names, source="vit_jax")


def init_from_config() -> ml_collections.ConfigDict:
    """The ``config.init_from`` section: ``path`` (None = train from scratch), ``format``
    (one of ``FORMATS``) and ``head`` (one of ``HEADS``)."""
    return ml_collections.ConfigDict(
        dict(path=ml_collections.config_dict.placeholder(str), format="vit_jax", head="zero")
    )


def check_init_from(config: ml_collections.ConfigDict) -> None:
    """One-line errors for ``config.init_from`` before anything compiles (no-op without it)."""
    init = config.get("init_from")
    if init is None or init.path is None:
        return
    if init.format not in FORMATS:
        raise ValueError(
            f"config.init_from.format: must be one of {', '.join(FORMATS)}, got {init.format!r}"
        )
    if init.head not in HEADS:
        raise ValueError(f"config.init_from.head: must be one of {', '.join(HEADS)}")
    if not os.path.isfile(init.path):
        raise FileNotFoundError(
            f"config.init_from.path: no file {init.path!r} (a vit_jax Mixer .npz, e.g. "
            "Mixer-B_16.npz)"
        )


def apply_init(config: ml_collections.ConfigDict, params: nnx.State) -> nnx.State:
    """``params`` initialised from ``config.init_from`` (unchanged when it is absent or its
    ``path`` is None): the trainer calls it on the freshly initialised ``nnx.Param`` state."""
    check_init_from(config)
    init = config.get("init_from")
    if init is None or init.path is None:
        return params
    return from_vit_jax(load_npz(init.path), params, head=init.head)


def _dotted(path: Path) -> str:
    return ".".join(str(p) for p in path)
