r"""Official iMixer PyTorch checkpoints (timm `state_dict`) <-> our `imixer_*` / `mixer_*` state.

    python -m imixer_jax.weights --in checkpoint.pth.tar --out weights.npz
    python -m imixer_jax.weights --in weights.npz --out checkpoint.pth

The first reads a checkpoint of github.com/Toshihiro-Ota/imixer (a bare ``state_dict``, or timm's
training checkpoint holding one under ``'state_dict'``; ``--ema`` takes ``'state_dict_ema'``;
DistributedDataParallel's ``module.`` prefix is dropped), infers the architecture from the array
shapes, checks every array against that model and writes our flat state as ``.npz`` (keys are our
dotted paths, ``blocks.0.token_mixer.fc1.kernel``; ``load_into(model, path)`` loads it). The second
writes such an ``.npz`` back as a ``state_dict`` the official code loads with
``model.load_state_dict``. PyTorch is needed only to read or write ``.pth`` files (the optional
extra ``torch``) and is imported only then; the mapping works on plain numpy dicts.

Mapping (torch ``weight`` is ``[out, in]``, our ``kernel`` is ``[in, out]``; ``i`` a block)::

    stem.proj.{weight [D, 3, P, P], bias}          stem.{kernel [P, P, 3, D], bias}
    blocks.i.norm1.{weight, bias}                  blocks.i.token_mixer.norm.{scale, bias}
    blocks.i.mlp_tokens.fc1.{weight, bias}         blocks.i.token_mixer.fc1.{kernel, bias}
    blocks.i.mlp_tokens.fc_sn1.weight_orig         blocks.i.token_mixer.fc_sn1.kernel
    blocks.i.mlp_tokens.fc_sn1.weight_u [out]      blocks.i.token_mixer.fc_sn1.u [out]
    blocks.i.mlp_tokens.fc_sn1.weight_v [in]       blocks.i.token_mixer.fc_sn1.v [in]
    (fc_sn2 likewise; fc2 like fc1)
    blocks.i.norm2.{weight, bias}                  blocks.i.norm.{scale, bias}
    blocks.i.mlp_channels.fc1 / fc2                blocks.i.channel_mlp.fc_c1 / fc_c2
    norm.{weight, bias}                            norm.{scale, bias}
    head.{weight, bias}                            head.{kernel, bias}

``weight_sigma`` (a logging buffer of the official spectral norm) is ignored on import and written
as u^T W v on export. The official spectral norm computes sigma = u^T W v with the same u, v, so
an evaluation-mode forward of the converted model equals the official one. Timm's plain MLP-Mixer
``state_dict`` (``mlp_tokens.fc1`` / ``fc2`` only) maps onto ``mixer_*`` the same way.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Mapping

import jax
import numpy as np
from flax import nnx, traverse_util

from imixer_jax.models import registry
from imixer_jax.models.configs import MixerConfig
from imixer_jax.models.mixer import Mixer
from imixer_jax.weights.vit_jax import PretrainedError, assign

Path = tuple

_TOP = {"stem": "stem.proj", "norm": "norm", "head": "head"}
_BLOCK = {
    ("token_mixer", "norm"): "norm1",
    ("token_mixer", "fc1"): "mlp_tokens.fc1",
    ("token_mixer", "fc2"): "mlp_tokens.fc2",
    ("token_mixer", "fc_sn1"): "mlp_tokens.fc_sn1",
    ("token_mixer", "fc_sn2"): "mlp_tokens.fc_sn2",
    ("norm",): "norm2",
    ("channel_mlp", "fc_c1"): "mlp_channels.fc1",
    ("channel_mlp", "fc_c2"): "mlp_channels.fc2",
}
_LEAVES = {"kernel": "weight", "bias": "bias", "scale": "weight", "u": "weight_u", "v": "weight_v"}
_SN_LAYERS = ("fc_sn1", "fc_sn2")
_IGNORED = re.compile(r"\.weight_sigma$")


def torch_key(path: Path) -> str:
    """The official ``state_dict`` key of our parameter or state path (a tuple, as in
    ``nnx.State.to_pure_dict``)."""
    *module, leaf = path
    if module[0] == "blocks":
        name = f"blocks.{module[1]}.{_BLOCK[tuple(module[2:])]}"
    else:
        name = _TOP[module[0]]
    suffix = _LEAVES[leaf]
    if leaf == "kernel" and module[-1] in _SN_LAYERS:
        suffix = "weight_orig"  # the official spectral norm keeps the raw weight under _orig
    return f"{name}.{suffix}"


def _to_ours(path: Path, value: np.ndarray) -> np.ndarray:
    if path[-1] != "kernel":
        return value
    return value.transpose(2, 3, 1, 0) if path[0] == "stem" else value.T


def _to_torch(path: Path, value: np.ndarray) -> np.ndarray:
    if path[-1] != "kernel":
        return value
    return value.transpose(3, 2, 0, 1) if path[0] == "stem" else value.T


def _checkpoint_state_dict(checkpoint: Mapping, ema: bool = False) -> dict[str, np.ndarray]:
    """The ``state_dict`` inside a timm training checkpoint (or the dict itself), without
    DistributedDataParallel's ``module.`` prefix and the ``weight_sigma`` logging buffers."""
    key = "state_dict_ema" if ema else "state_dict"
    if key in checkpoint:
        checkpoint = checkpoint[key]
    elif ema:
        raise PretrainedError("checkpoint has no 'state_dict_ema' (trained without --model-ema)")
    out = {}
    for name, value in checkpoint.items():
        name = name.removeprefix("module.")
        if not _IGNORED.search(name):
            out[name] = np.asarray(value)
    return out


def from_torch(state_dict: Mapping[str, np.ndarray], state: nnx.State) -> nnx.State:
    """``state`` (``nnx.state(model)``: parameters and spectral-norm u, v) filled from an
    official ``state_dict`` of numpy arrays (or a timm checkpoint dict holding one).

    Raises:
      PretrainedError: one line naming the first entry that does not fit the model.
    """
    flat = _checkpoint_state_dict(state_dict)
    paths = traverse_util.flatten_dict(nnx.to_pure_dict(state))
    names = {path: torch_key(path) for path in paths}
    transforms = {path: (lambda a, p=path: _to_ours(p, a)) for path in paths}
    return assign(state, flat, names, source="official iMixer", transforms=transforms)


def to_torch(state: nnx.State | Mapping) -> dict[str, np.ndarray]:
    """Our ``nnx.state(model)`` (or its ``to_pure_dict()``) as an official ``state_dict`` of
    numpy arrays (stem, blocks in order, norm, head), with ``weight_sigma = u^T W v`` for each
    spectral-norm layer."""
    pure = nnx.to_pure_dict(state) if isinstance(state, nnx.State) else state
    flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, pure))
    out = {torch_key(path): _to_torch(path, value) for path, value in flat.items()}
    for path in flat:
        if path[-1] == "u":
            prefix = torch_key(path).removesuffix("_u")
            u, w, v = out[f"{prefix}_u"], out[f"{prefix}_orig"], out[f"{prefix}_v"]
            out[f"{prefix}_sigma"] = np.asarray([u @ w @ v], np.float32)
    return dict(sorted(out.items(), key=lambda kv: _official_order(kv[0])))


def _official_order(key: str) -> tuple:
    order = ("stem", "blocks", "norm", "head")
    block = re.match(r"blocks\.(\d+)\.", key)
    return (order.index(key.split(".")[0]), int(block.group(1)) if block else 0, key)


def model_config(state_dict: Mapping[str, np.ndarray], **overrides) -> MixerConfig:
    """The ``MixerConfig`` of the architecture an official ``state_dict`` was saved from (shapes
    only); registry defaults for what shapes do not fix (n_iter, n_power, ...)."""
    sd = _checkpoint_state_dict(state_dict)
    try:
        dim, _, patch, _ = sd["stem.proj.weight"].shape
        token_dim, num_tokens = sd["blocks.0.mlp_tokens.fc1.weight"].shape
        channels = sd["blocks.0.mlp_channels.fc1.weight"].shape[0]
        num_classes = sd["head.weight"].shape[0]
    except KeyError as e:
        raise PretrainedError(f"not an iMixer / MLP-Mixer state_dict: no {e.args[0]!r}") from None
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise PretrainedError(f"{num_tokens} tokens is not a square grid of patches")
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    kwargs = dict(
        num_classes=num_classes,
        img_size=side * patch,
        patch_size=patch,
        num_blocks=max(blocks) + 1,
        hidden_dim=dim,
        tokens_mlp_dim=token_dim,
        channels_mlp_dim=channels,
    )
    sn1 = sd.get("blocks.0.mlp_tokens.fc_sn1.weight_orig")
    if sn1 is not None:
        kwargs["hidden_ratio"] = sn1.shape[0] / token_dim
        if int(token_dim * kwargs["hidden_ratio"]) != sn1.shape[0]:
            raise PretrainedError(f"iMLP hidden width {sn1.shape[0]} is not int(T * ratio)")
    base = "imixer_s16" if sn1 is not None else "mixer_s16"
    return registry.model_config(base, **{**kwargs, **overrides})


def abstract_state(config: MixerConfig) -> nnx.State:
    """``nnx.state`` of a ``Mixer(config)`` with shape-only leaves (nothing is allocated)."""
    return nnx.state(nnx.eval_shape(lambda: Mixer(config, rngs=nnx.Rngs(0))))


def save_state_npz(path: str, state: nnx.State) -> None:
    """Our flat state as ``.npz``: keys are dotted paths (``blocks.0.token_mixer.fc1.kernel``)."""
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(state))
    np.savez(path, **{".".join(map(str, p)): np.asarray(v) for p, v in flat.items()})


def load_state_npz(path: str) -> dict:
    """The nested pure dict (``nnx.State.to_pure_dict`` form) saved by ``save_state_npz``."""
    with np.load(path, allow_pickle=False) as npz:
        flat = {tuple(int(p) if p.isdigit() else p for p in k.split(".")): npz[k] for k in npz}
    return traverse_util.unflatten_dict(flat)


def load_into(model: nnx.Module, path: str) -> None:
    """Load an ``.npz`` of ``save_state_npz`` (parameters and u, v) into ``model`` in place,
    checking every name and shape (one-line ``PretrainedError``); the model may be abstract
    (``nnx.eval_shape``)."""
    state = nnx.state(model)
    flat = traverse_util.flatten_dict(load_state_npz(path))
    dotted = {".".join(map(str, p)): v for p, v in flat.items()}
    names = {p: ".".join(map(str, p)) for p in traverse_util.flatten_dict(nnx.to_pure_dict(state))}
    nnx.update(model, assign(state, dotted, names, source=f"{path!r}"))


def _torch():
    try:
        import torch  # optional dependency, imported only for .pth files
    except ImportError:
        raise SystemExit(
            "error: reading or writing PyTorch files needs torch: pip install 'imixer_jax[torch]'"
        ) from None
    return torch


def _read_torch(path: str, ema: bool) -> dict[str, np.ndarray]:
    torch = _torch()
    try:  # weights only (no arbitrary unpickling); timm's training checkpoints store their args
        torch.serialization.add_safe_globals([argparse.Namespace])
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many exception types for unreadable files
        raise SystemExit(
            f"error: cannot read {path!r} as a PyTorch state_dict ({type(e).__name__}): re-save "
            "it with the official clean_checkpoint.py"
        ) from None
    key = "state_dict_ema" if ema else "state_dict"
    if ema and key not in checkpoint:
        raise SystemExit(f"error: {path!r} has no 'state_dict_ema' (trained without --model-ema)")
    sd = checkpoint.get(key, checkpoint)
    return _checkpoint_state_dict({k: v.detach().float().cpu().numpy() for k, v in sd.items()})


def convert(in_path: str, out_path: str, *, ema: bool = False) -> None:
    """torch (``.pth``, ``.pt``, ``.tar``, ``.bin``) -> our ``.npz``, or our ``.npz`` -> torch."""
    if not os.path.isfile(in_path):
        raise SystemExit(f"error: no file {in_path!r}")
    if in_path.endswith(".npz"):
        if out_path.endswith(".npz"):
            raise SystemExit("error: --in is already an .npz; --out must be a PyTorch file (.pth)")
        sd = to_torch(load_state_npz(in_path))
        from_torch(sd, abstract_state(model_config(sd)))  # checks every shape, one-line errors
        torch = _torch()
        torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, out_path)
        return
    if not out_path.endswith(".npz"):
        raise SystemExit("error: --out must end in .npz (our flat state) for a PyTorch --in")
    sd = _read_torch(in_path, ema)
    state = from_torch(sd, abstract_state(model_config(sd)))
    save_state_npz(out_path, state)
