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
parameters with ``params/`` are accepted too. As vit_jax's own ``checkpoint.load_pretrained``, the
loader tolerates entries the model has no place for (e.g. a ``pre_logits`` layer; they are
logged and left out) and replaces the head for new classes. Google's Mixer computes the tanh
approximation of GELU (flax's ``nn.gelu`` default); build the model with
``approximate_gelu=True`` to reproduce its logits exactly (the default, the exact erf GELU of the
official iMixer and timm, differs by at most 4.8e-4 per activation; docs/recipe.md#finetune).

``from_vit_jax(flat, params)`` is a pure function on the flat dict and the model's
``nnx.State`` of ``nnx.Param``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from absl import logging
from flax import nnx

from imixer_jax.weights.mapping import (
    Path,
    PretrainedError,
    dotted,
    fill,
    flat_state,
    per_block,
)

HEADS = ("auto", "keep", "zero")
BIG_VISION_PREFIX = "params/"
SOURCE = "vit_jax"


def is_vit_jax(keys: list[str]) -> bool:
    """Whether the ``.npz`` keys are those of a vit_jax / big_vision Mixer (a patch stem under
    ``'/'``-joined names)."""
    return "stem/kernel" in keys or f"{BIG_VISION_PREFIX}stem/kernel" in keys


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


def from_vit_jax(
    flat: Mapping[str, np.ndarray],
    params: nnx.State,
    *,
    head: str = "auto",
    check_only: bool = False,
) -> nnx.State | None:
    """``params`` (a ``mixer_*`` model's ``nnx.state(model, nnx.Param)``, either block layout)
    with the weights of a vit_jax / big_vision Mixer checkpoint ``flat``.

    ``head``: ``'keep'`` loads the checkpoint's classifier (class counts must match), ``'zero'``
    gives a new zero head of the model's class count (vit_jax's fine-tuning), ``'auto'`` keeps it
    when the shapes match and zeroes it otherwise. Entries the model has no place for are left
    out (logged). ``check_only``: check names and shapes only (``flat`` may hold
    ``mapping.shape_only`` arrays), place nothing and return None.

    Raises:
      PretrainedError: one line naming the first entry that does not fit.
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}; got {head!r}")
    if flat and all(key.startswith(BIG_VISION_PREFIX) for key in flat if "/" in key):
        flat = {k[len(BIG_VISION_PREFIX) :]: v for k, v in flat.items()}
    target = flat_state(params)
    if any("fc_sn1" in dotted(p) for p in target) or not any("token_mixer" in p for p in target):
        raise PretrainedError(
            "vit_jax checkpoints hold an MLP-Mixer; build a mixer_* model (token_mixer='mlp')"
        )
    names = vit_jax_names(1 + max(p[1] for p in per_block(target)[0] if p[0] == "blocks"))
    head_shape = tuple(target[("head", "kernel")].shape)
    theirs = tuple(np.shape(flat.get("head/kernel", ())))
    if head == "keep" and theirs != head_shape:
        raise PretrainedError(
            f"checkpoint head/kernel has shape {theirs}, the model's head {head_shape}; use "
            "head='zero' (a new zero head) or build the model with the checkpoint's num_classes"
        )
    if head == "zero" or (head == "auto" and theirs != head_shape):
        flat = dict(flat)
        for leaf in ("kernel", "bias"):
            flat[f"head/{leaf}"] = np.zeros(target[("head", leaf)].shape, np.float32)
    extra = sorted(set(flat) - set(names.values()))
    if extra and not check_only:
        logging.info(
            "vit_jax checkpoint: %d entries without a place left out: %s",
            len(extra),
            extra,
        )
    return fill(
        params,
        flat,
        names.get,
        source=SOURCE,
        ignore=lambda key: True,
        check_only=check_only,
    )
