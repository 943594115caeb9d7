r"""Official paramixer PyTorch checkpoints (timm ``state_dict``) <-> our ``ParaMixer`` state.

The parallelized MLP-Mixer family of github.com/Toshihiro-Ota/paramixer (``models/mixers.py``,
``models/layers.py``: ``vMixerBlock`` / ``pMixerBlock`` with ``vMlp``, ``sMlp`` or ``aMlp``, no MLP
biases, LayerNorms over the whole ``(S, D)`` token matrix). Mapping (torch ``weight`` is
``[out, in]``, our ``kernel`` is ``[in, out]``; ``i`` a block, ``mlp`` = ``mlp_tokens`` (N = S,
K = T) or ``mlp_channels`` (N = D, K = C))::

    stem.proj.{weight [D, 3, P, P], bias}        stem.{kernel [P, P, 3, D], bias}
    blocks.i.norm1.{weight, bias} [S, D]         blocks.i.norm1.{scale, bias}      (serial)
    blocks.i.norm2.{weight, bias} [S, D]         blocks.i.norm2.{scale, bias}      (serial)
    blocks.i.norm.{weight, bias} [S, D]          blocks.i.norm.{scale, bias}       (parallel)
    blocks.i.mlp.fc1.weight [K, N]               blocks.i.mlp.fc1.kernel [N, K]    (vMlp, aMlp)
    blocks.i.mlp.fc2.weight [N, K]               blocks.i.mlp.fc2.kernel [K, N]    (vMlp, aMlp)
    blocks.i.mlp.fc2.weight [K, N]               blocks.i.mlp.fc1.kernel [N, K]    (sMlp)
    norm.{weight, bias} [D]                      norm.{scale, bias}
    head.{weight, bias}                          head.{kernel, bias}

The official ``sMlp`` names its single (tied) weight ``fc2`` although it is applied first; ours is
``fc1``. ``vMlp`` (paramixer) and ``aMlp`` (asymmixer) have the same two weights, so a
``state_dict`` alone cannot tell a ``paramixer_*`` from an ``asymmixer_*`` checkpoint, nor the
block ``repeats``: those come from the model name (the ``'arch'`` of timm's training checkpoint,
or given).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from imixer_jax.models import registry
from imixer_jax.models.configs import ParaMixerConfig
from imixer_jax.weights.mapping import Path, PretrainedError, torch_backbone_fields

_TOP = {"stem": "stem.proj", "norm": "norm", "head": "head"}
_LEAVES = {"kernel": "weight", "bias": "bias", "scale": "weight"}


def is_paramixer(state_dict: Mapping[str, object]) -> bool:
    """Whether ``state_dict`` (official keys) is of the parallelized family: its LayerNorms are
    over the whole ``(S, D)`` token matrix, so their weights are 2-D."""
    for name in ("blocks.0.norm1.weight", "blocks.0.norm.weight"):
        if name in state_dict:
            return np.ndim(state_dict[name]) == 2
    return False


def torch_key(path: Path, mlp: str) -> str:
    """The official ``state_dict`` key of our parameter path, for MLPs of kind ``mlp``."""
    *module, leaf = path
    if module[0] != "blocks":
        return f"{_TOP[module[0]]}.{_LEAVES[leaf]}"
    name = f"blocks.{module[1]}.{'.'.join(module[2:])}"
    if mlp == "symmetric":
        name = name.replace(".fc1", ".fc2")  # sMlp's single weight is named fc2
    return f"{name}.{_LEAVES[leaf]}"


def model_config(
    state_dict: Mapping[str, np.ndarray], name: str | None = None, **overrides
) -> ParaMixerConfig:
    """The ``ParaMixerConfig`` of an official ``state_dict``: block kind and widths from the
    shapes; MLP kind and ``repeats`` from ``name`` (a registered ``*mixer_*_224*`` name) when given.
    Without a name a serial block is ``vanillamixer`` and a single MLP weight ``symmixer``.

    Raises:
      PretrainedError: not a paramixer ``state_dict``, or a parallel block with two weights
        (``paramixer`` or ``asymmixer``) without a name.
    """
    sd = state_dict
    serial = "blocks.0.norm1.weight" in sd
    try:
        dim, _, patch, _ = np.shape(sd["stem.proj.weight"])
        num_tokens = np.shape(sd[f"blocks.0.{'norm1' if serial else 'norm'}.weight"])[0]
        num_classes = np.shape(sd["head.weight"])[0]
    except KeyError as e:
        raise PretrainedError(
            f"not a paramixer state_dict: no {e.args[0]!r}; pass an official checkpoint"
        ) from None
    tied = "blocks.0.mlp_tokens.fc1.weight" not in sd
    tokens_w = sd.get(
        "blocks.0.mlp_tokens.fc2.weight" if tied else "blocks.0.mlp_tokens.fc1.weight"
    )
    channels_w = sd.get(
        "blocks.0.mlp_channels.fc2.weight" if tied else "blocks.0.mlp_channels.fc1.weight"
    )
    if tokens_w is None or channels_w is None:
        raise PretrainedError("not a paramixer state_dict: block 0 has no MLP weights")
    if name is None:
        if serial:
            name = "vanillamixer_s16_224"
        elif tied:
            name = "symmixer_s16_224"
        else:
            raise PretrainedError(
                "a parallel block with fc1 and fc2 is a paramixer_* or an asymmixer_* model and "
                "the state_dict cannot tell which; give the model name (--model)"
            )
    base = registry.model_config(name)
    if not isinstance(base, ParaMixerConfig):
        raise PretrainedError(f"{name!r} is not a parallelized Mixer variant; name one of those")
    expected = ("serial" if serial else "parallel", "symmetric" if tied else None)
    if base.block != expected[0] or (tied != (base.mlp == "symmetric")):
        raise PretrainedError(
            f"the state_dict holds {expected[0]} blocks with {'one' if tied else 'two'} MLP "
            f"weights, not the {base.block} {base.mlp} blocks of {name!r}; name its model"
        )
    fields = dict(
        **torch_backbone_fields(
            sd, num_tokens=num_tokens, patch=patch, num_classes=num_classes, dim=dim
        ),
        tokens_mlp_dim=np.shape(tokens_w)[0],
        channels_mlp_dim=np.shape(channels_w)[0],
    )
    return base.replace(**{**fields, **overrides})
