r"""Official PyTorch checkpoints (timm ``state_dict``) <-> our models: iMixer / MLP-Mixer here, the
parallelized Mixer family through ``torch_paramixer``.

    python -m imixer_jax.weights --in checkpoint.pth.tar --out w.npz [--model NAME]
    python -m imixer_jax.weights --in w.npz --out checkpoint.pth

The first reads a checkpoint of github.com/Toshihiro-Ota/imixer or .../paramixer (a bare
``state_dict``, or timm's training checkpoint holding one under ``'state_dict'``; ``--ema``
takes ``'state_dict_ema'``; DistributedDataParallel's ``module.`` prefix is dropped), infers the
architecture from the array shapes and the model name (``--model``, else the checkpoint's
``'arch'``; it settles what shapes cannot: ``n_iter``, paramixer vs asymmixer), checks
every array against that model and writes our ``.npz`` with the model's name and settings
(``weights.ours``). The second writes such an ``.npz`` back as a ``state_dict`` the official code
loads with ``model.load_state_dict``. PyTorch is needed only to read or write ``.pth`` files (the
optional extra ``torch``) and is imported only then; the mappings work on plain numpy dicts. A bad
input ends the command with one line ``error: <cause>; <fix>`` and exit status 1.

iMixer mapping (torch ``weight`` is ``[out, in]``, our ``kernel`` is ``[in, out]``; ``i`` a block)::

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
import os
import re
import zipfile
from collections.abc import Mapping

import jax
import numpy as np
from flax import nnx

from imixer_jax.models import registry
from imixer_jax.models.configs import MixerConfig, ModelConfig
from imixer_jax.weights import ours, torch_paramixer, vit_jax
from imixer_jax.weights.mapping import (
    Path,
    PretrainedError,
    flat_state,
    match,
    per_block,
    read_npz,
    replace,
    shape_only,
    torch_backbone_fields,
)

SOURCE = "official PyTorch"
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
_LEAVES = {
    "kernel": "weight",
    "bias": "bias",
    "scale": "weight",
    "u": "weight_u",
    "v": "weight_v",
}
_SN_LAYERS = ("fc_sn1", "fc_sn2")
_IGNORED = re.compile(r"\.weight_sigma$")
TORCH_SUFFIXES = (".pth", ".pt", ".tar", ".bin")


def torch_key(path: Path) -> str:
    """The official iMixer ``state_dict`` key of our per-block parameter or state path (a tuple,
    as in ``nnx.State.to_pure_dict``)."""
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


def _is_paramixer_state(paths) -> bool:
    return any(len(p) > 2 and p[2] in ("mlp_tokens", "norm1") for p in paths)


def _key_function(paths):
    """Our per-block path -> official key, for the family (and MLP kind) of ``paths``."""
    paths = list(paths)
    if not _is_paramixer_state(paths):
        return torch_key
    tied = not any(p[2:4] == ("mlp_tokens", "fc2") for p in paths if p[0] == "blocks")
    mlp = "symmetric" if tied else "vanilla"
    return lambda path: torch_paramixer.torch_key(path, mlp)


def state_dict_of(checkpoint: Mapping, ema: bool = False) -> dict[str, object]:
    """The ``state_dict`` inside a timm training checkpoint (or the dict itself), without
    DistributedDataParallel's ``module.`` prefix and the ``weight_sigma`` logging buffers."""
    key = "state_dict_ema" if ema else "state_dict"
    if key in checkpoint:
        checkpoint = checkpoint[key]
    elif ema:
        raise PretrainedError(
            "checkpoint has no 'state_dict_ema' (trained without --model-ema); drop --ema"
        )
    if not isinstance(checkpoint, Mapping):
        raise PretrainedError(
            f"the checkpoint's state_dict is a {type(checkpoint).__name__}, not a dict of arrays; "
            "pass a file saved with torch.save(model.state_dict())"
        )
    out = {}
    for name, value in checkpoint.items():
        name = str(name).removeprefix("module.")
        if not _IGNORED.search(name):
            out[name] = value
    return out


def from_torch(
    state_dict: Mapping[str, np.ndarray], state: nnx.State, *, check_only: bool = False
) -> nnx.State | None:
    """``state`` (``nnx.state(model)`` of a ``Mixer`` or ``ParaMixer``, either block layout:
    parameters and spectral-norm u, v) filled from an official ``state_dict`` of numpy arrays (or
    a timm checkpoint dict holding one). ``check_only``: names and shapes only, return None.

    Raises:
      PretrainedError: one line naming the first entry that does not fit the model.
    """
    arrays = match_torch(flat_state(state), state_dict)
    return None if check_only else replace(state, arrays)


def match_torch(
    target: Mapping[Path, object],
    state_dict: Mapping[str, np.ndarray],
    *,
    source: str = SOURCE,
) -> dict[Path, np.ndarray]:
    """``mapping.match`` of an official ``state_dict`` (or timm checkpoint) against a model's
    ``{path: leaf}`` (parameters and u, v; either block layout), arrays in our layout."""
    flat = state_dict_of(state_dict)
    key_of = _key_function(per_block(target)[0])
    return match(target, flat, key_of, source=source, transform=_to_ours)


def to_torch(state: nnx.State | Mapping) -> dict[str, np.ndarray]:
    """Our ``nnx.state(model)`` (or its pure dict, either block layout) as an official
    ``state_dict`` of numpy arrays (stem, blocks in order, norm, head), with
    ``weight_sigma = u^T W v`` for each spectral-norm layer."""
    flat, _ = per_block(flat_state(jax.tree.map(np.asarray, state)))
    key_of = _key_function(flat)
    out = {key_of(path): _to_torch(path, np.asarray(value)) for path, value in flat.items()}
    for path in flat:
        if path[-1] == "u":
            prefix = key_of(path).removesuffix("_u")
            u, w, v = out[f"{prefix}_u"], out[f"{prefix}_orig"], out[f"{prefix}_v"]
            out[f"{prefix}_sigma"] = np.asarray([u @ w @ v], np.float32)
    return dict(sorted(out.items(), key=lambda kv: _official_order(kv[0])))


def _official_order(key: str) -> tuple:
    order = ("stem", "blocks", "norm", "head")
    block = re.match(r"blocks\.(\d+)\.", key)
    return (order.index(key.split(".")[0]), int(block.group(1)) if block else 0, key)


def registered_name(arch: str | None) -> str | None:
    """Our registered variant for a timm model name (``imixer_s16_224`` -> ``imixer_s16``,
    ``symmixer_s16_224_ni2`` as it is), or None."""
    if not arch:
        return None
    names = (*registry.VARIANT_NAMES, *registry.PARAMIXER_NAMES)
    for name in (arch, arch.removesuffix("_224")):
        if name in names:
            return name
    return None


def model_config(
    state_dict: Mapping[str, np.ndarray], name: str | None = None, **overrides
) -> ModelConfig:
    """The config of the architecture an official ``state_dict`` was saved from: widths from the
    shapes, the rest from the registered variant ``name`` if given (else registry defaults:
    n_iter, n_power, ... for iMixer; see ``torch_paramixer.model_config``)."""
    sd = state_dict_of(state_dict)
    if torch_paramixer.is_paramixer(sd):
        return torch_paramixer.model_config(sd, name, **overrides)
    try:
        dim, _, patch, _ = np.shape(sd["stem.proj.weight"])
        token_dim, num_tokens = np.shape(sd["blocks.0.mlp_tokens.fc1.weight"])
        channels = np.shape(sd["blocks.0.mlp_channels.fc1.weight"])[0]
        num_classes = np.shape(sd["head.weight"])[0]
    except KeyError as e:
        raise PretrainedError(
            f"not an iMixer, MLP-Mixer or paramixer state_dict: no {e.args[0]!r}; pass an official "
            "checkpoint"
        ) from None
    fields = dict(
        **torch_backbone_fields(
            sd, num_tokens=num_tokens, patch=patch, num_classes=num_classes, dim=dim
        ),
        tokens_mlp_dim=token_dim,
        channels_mlp_dim=channels,
    )
    imlp = any(".fc_sn1." in k for k in sd)
    if imlp:  # the iMLP's hidden width from the bias, so a mis-shaped weight is named as such
        width = sd.get(
            "blocks.0.mlp_tokens.fc_sn1.bias",
            sd.get("blocks.0.mlp_tokens.fc_sn1.weight_orig"),
        )
        if width is None:
            raise PretrainedError(
                "checkpoint lacks 'blocks.0.mlp_tokens.fc_sn1.bias'; is it complete?"
            )
        fields["hidden_ratio"] = np.shape(width)[0] / token_dim
    base = name or ("imixer_s16" if imlp else "mixer_s16")
    config = registry.model_config(base)
    if not isinstance(config, MixerConfig) or (config.token_mixer == "imlp") != imlp:
        raise PretrainedError(
            f"the state_dict holds an {'iMixer' if imlp else 'MLP-Mixer'}, not a {base!r}; name "
            "a matching model"
        )
    return config.replace(**{**fields, **overrides})


def abstract_state(config: ModelConfig) -> nnx.State:
    """``nnx.state`` of the model of ``config`` with shape-only leaves (nothing is allocated)."""
    return nnx.state(nnx.eval_shape(lambda: registry.build(config, rngs=nnx.Rngs(0))))


def file_kind(path: str) -> str:
    """``'torch'`` for a PyTorch file (a zip archive holding ``data.pkl``, torch.save's format,
    or a bare pickle, its legacy one), ``'npz'`` for any other zip archive.

    Raises:
      PretrainedError: no such file, or a file of neither kind (damaged or foreign).
    """
    if not os.path.isfile(path):
        raise PretrainedError(f"no weights file {path!r}; check the path")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise PretrainedError(
                f"{path!r} is a damaged zip archive ({e}); write it again"
            ) from None
        return "torch" if any(n.split("/")[-1] == "data.pkl" for n in names) else "npz"
    with open(path, "rb") as f:
        if f.read(1) == b"\x80":
            return "torch"
    raise PretrainedError(
        f"{path!r} is neither an .npz nor a PyTorch file (damaged or foreign); pass a vit_jax "
        ".npz, an official iMixer or paramixer .pth, or an .npz of ours"
    )


def torch_module():
    """``torch``, or a one-line error saying how to install it."""
    try:
        import torch  # optional dependency, imported only for .pth files
    except ImportError:
        raise PretrainedError(
            "reading or writing PyTorch files needs torch; pip install 'imixer_jax[torch]'"
        ) from None
    return torch


def read_torch(path: str, *, ema: bool = False, mmap: bool = False) -> tuple[dict, str | None]:
    """``(state_dict of numpy arrays, timm's 'arch' or None)`` of a PyTorch file; weights only
    (nothing but tensors, containers and timm's argparse namespace is unpickled). ``mmap``: the
    tensors are mapped, not read (their shapes are free)."""
    torch = torch_module()
    try:  # timm's training checkpoints store their args as an argparse.Namespace
        torch.serialization.add_safe_globals([argparse.Namespace])
        mmap = mmap and zipfile.is_zipfile(path)  # the legacy format cannot be mapped
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises many exception types for unreadable files
        raise PretrainedError(
            f"cannot read {path!r} as a PyTorch checkpoint ({type(e).__name__}); re-save it "
            "with torch.save(model.state_dict())"
        ) from None
    if not isinstance(checkpoint, Mapping):
        raise PretrainedError(
            f"{path!r} holds a {type(checkpoint).__name__}, not a state_dict; re-save it with "
            "torch.save(model.state_dict())"
        )
    arch = checkpoint.get("arch") if isinstance(checkpoint.get("arch"), str) else None
    sd = state_dict_of(checkpoint, ema)
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            raise PretrainedError(
                f"{path!r} entry {key!r} is a {type(value).__name__}, not a tensor; pass a "
                "model's state_dict"
            )
    if mmap:
        return {k: shape_only(tuple(v.shape)) for k, v in sd.items()}, arch
    return {k: v.detach().float().cpu().numpy() for k, v in sd.items()}, arch


def convert(in_path: str, out_path: str, *, ema: bool = False, model: str | None = None) -> None:
    """torch (``.pth``, ``.pt``, ``.tar``, ``.bin``) -> our ``.npz``, or our ``.npz`` -> torch.

    Raises:
      PretrainedError, OSError: one-line messages.
    """
    kind = file_kind(in_path)
    out_dir = os.path.dirname(os.path.abspath(out_path))
    if os.path.isdir(out_path) or not os.path.isdir(out_dir):
        what = (
            "is a directory"
            if os.path.isdir(out_path)
            else f"is in a missing directory {out_dir!r}"
        )
        raise PretrainedError(f"--out {out_path!r} {what}; name a file in an existing directory")
    if kind == "npz":
        if out_path.endswith(".npz"):
            raise PretrainedError("--in is already an .npz; --out must be a PyTorch file (.pth)")
        entries = read_npz(in_path)
        if vit_jax.is_vit_jax(list(entries)):
            raise PretrainedError(
                f"{in_path!r} is a vit_jax checkpoint, which has no PyTorch form here; train from "
                "it with --config.init_from.path"
            )
        name, config = ours.settings_of(entries, repr(in_path))
        state = ours.load(entries, abstract_state(config), config, source=repr(in_path))
        sd = to_torch(state)
        torch = torch_module()
        torch.save(
            {k: torch.from_numpy(np.array(v, order="C")) for k, v in sd.items()},
            out_path,
        )
        return
    if not out_path.endswith(".npz"):
        raise PretrainedError("--out must end in .npz (our weights file) for a PyTorch --in")
    sd, arch = read_torch(in_path, ema=ema)
    name = model or registered_name(arch)
    config = model_config(sd, name)
    state = from_torch(sd, abstract_state(config))
    ours.save(out_path, state, config, name=name)
