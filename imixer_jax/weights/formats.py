"""Which weights format a file holds, and a model's first weights from any of them (``InitFrom``).

Formats, told apart by content (never by file name):

* ``vit_jax``: Google's vit_jax / big_vision Mixer ``.npz`` (``vit_jax``);
* ``torch``: an official iMixer or paramixer PyTorch checkpoint (``torch_imixer``,
  ``torch_paramixer``; needs the optional extra ``torch``);
* ``imixer_jax``: our own ``.npz`` with the model's settings (``ours``).

``read(path, shapes_only=True)`` reads only the file's headers: entry names and shapes (``.npz``
headers; PyTorch tensors memory-mapped), so ``check`` can test a file against a model's abstract
state in well under a second, before a workdir is created or anything compiles. ``place`` puts a
file's arrays into a model's parameters and other variables (spectral-norm u, v); ``apply_init``
is the trainer's hook. Every failure is a one-line ``PretrainedError``.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from collections.abc import Mapping

import numpy as np
from flax import nnx

from imixer_jax.models.configs import ModelConfig
from imixer_jax.weights import ours, torch_imixer, vit_jax
from imixer_jax.weights.mapping import (
    PretrainedError,
    dotted,
    flat_state,
    match,
    read_npz,
    replace,
    shape_only,
)

FORMATS = ("auto", "vit_jax", "torch", "imixer_jax")
HEADS = vit_jax.HEADS
_HEAD_KEYS = {  # the head's entries in each format, in that format's layout
    "torch": {"kernel": "head.weight", "bias": "head.bias"},
    "imixer_jax": {"kernel": "head.kernel", "bias": "head.bias"},
}


@dataclasses.dataclass(frozen=True)
class Weights:
    """A weights file's ``format`` (one of ``FORMATS`` but ``'auto'``), its flat ``entries``
    (arrays, or ``shape_only`` stand-ins) and, for a timm checkpoint, the model name it records
    (``arch``)."""

    format: str
    entries: Mapping[str, np.ndarray]
    arch: str | None = None


def detect(path: str) -> str:
    """The format of the file at ``path`` (its first bytes and entry names).

    Raises:
      PretrainedError: no such file, or a file of no known format.
    """
    if torch_imixer.file_kind(path) == "torch":
        return "torch"
    keys = _npz_headers(path)
    if ours.SETTINGS_KEY in keys:
        return "imixer_jax"
    if vit_jax.is_vit_jax(list(keys)):
        return "vit_jax"
    first = ", ".join(repr(k) for k in list(keys)[:3]) or "none"
    raise PretrainedError(
        f"{path!r} is an .npz of no known weights format (entries {first}); pass a vit_jax .npz, "
        "an official .pth, or an .npz written by the converter"
    )


def _npz_headers(path: str) -> dict[str, np.ndarray]:
    """``{entry: shape_only array}`` from the ``.npy`` headers of an ``.npz`` (no data read but
    our settings entry, a short text).

    Raises:
      PretrainedError: a damaged archive, an entry that is not an ``.npy``, or object arrays.
    """
    out = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if not name.endswith(".npy"):
                    raise PretrainedError(f"{path!r} entry {name!r} is not an array; pass an .npz")
                with archive.open(name) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read_header(f)
                if dtype.hasobject:
                    raise PretrainedError(
                        f"{path!r} entry {name[:-4]!r} holds pickled objects, which are never "
                        "loaded; save the weights as numeric arrays"
                    )
                if name[:-4] == ours.SETTINGS_KEY:  # a short text: read it
                    with archive.open(name) as f:
                        out[name[:-4]] = np.lib.format.read_array(f, allow_pickle=False)
                else:
                    out[name[:-4]] = shape_only(shape, dtype)
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as e:
        if isinstance(e, PretrainedError):
            raise
        raise PretrainedError(
            f"{path!r} is a damaged .npz ({type(e).__name__}); download or convert it again"
        ) from None
    return out


def read(path: str, *, format: str = "auto", shapes_only: bool = False) -> Weights:
    """The entries of the weights file at ``path`` (``shapes_only``: names and shapes only)."""
    found = detect(path)
    if format not in ("auto", found):
        raise PretrainedError(f"{path!r} is a {found} file, not {format}; set format='auto'")
    if found == "torch":
        sd, arch = torch_imixer.read_torch(path, mmap=shapes_only)
        return Weights(found, sd, arch)
    if shapes_only:
        return Weights(found, _npz_headers(path))
    return Weights(found, read_npz(path))


def place(
    weights: Weights,
    params: nnx.State,
    rest: nnx.State,
    config: ModelConfig,
    *,
    head: str = "auto",
    source: str,
    check_only: bool = False,
) -> tuple[nnx.State, nnx.State] | None:
    """``(params, rest)`` of a model of ``config`` (its ``nnx.Param`` state and its other
    variables, either may be abstract) filled from ``weights``; the head as ``head`` says
    (``vit_jax.from_vit_jax``). ``check_only``: check only and return None.

    Raises:
      PretrainedError: one line naming the first entry or setting that does not fit.
    """
    if weights.format == "vit_jax":
        loaded = vit_jax.from_vit_jax(weights.entries, params, head=head, check_only=check_only)
        return None if check_only else (loaded, rest)
    target = {**flat_state(params), **flat_state(rest)}
    entries = dict(weights.entries)
    kind = weights.format
    their_head = tuple(np.shape(entries.get(_HEAD_KEYS[kind]["bias"], ())))
    ours_head = tuple(target[("head", "bias")].shape)
    new_head = head == "zero" or (head == "auto" and their_head != ours_head)
    if head == "keep" and their_head != ours_head:
        raise PretrainedError(
            f"{source} has {their_head[0] if their_head else 0} classes, the model "
            f"{config.num_classes}; use head='zero' (a new zero head) or build the model with "
            "the checkpoint's num_classes"
        )
    if new_head:
        kernel = target[("head", "kernel")].shape
        entries[_HEAD_KEYS[kind]["kernel"]] = np.zeros(
            kernel if kind == "imixer_jax" else kernel[::-1], np.float32
        )
        entries[_HEAD_KEYS[kind]["bias"]] = np.zeros(ours_head, np.float32)
    ignore = ("num_classes",) if new_head else ()
    if kind == "imixer_jax":
        name, saved = ours.settings_of(entries, source)
        ours.check_settings(saved, config, source=source, name=name, ignore=ignore)
        entries.pop(ours.SETTINGS_KEY)
        arrays = match(target, entries, dotted, source=source)
    else:
        name = torch_imixer.registered_name(weights.arch)
        if name is not None:  # the recorded model settles what shapes cannot (repeats, MLP kind)
            recorded = torch_imixer.model_config(entries, name)
            ours.check_settings(recorded, config, source=source, name=name, ignore=ignore)
        arrays = torch_imixer.match_torch(target, entries, source=source)
    if check_only:
        return None
    return replace(params, arrays), replace(rest, arrays)


@dataclasses.dataclass(frozen=True)
class InitFrom:
    """A model's first weights: the file at ``path``, read as ``format`` (one of ``FORMATS``;
    ``'auto'`` tells them apart by content), its head as ``head`` says (one of ``HEADS``).

    Raises:
      PretrainedError: ``'<field>: <what is wrong>'`` for a field that cannot work (the file's
        contents are checked by ``check``).
    """

    path: str
    format: str = "auto"
    head: str = "zero"

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise PretrainedError(
                f"format: must be one of {', '.join(FORMATS)}, got {self.format!r}"
            )
        if self.head not in HEADS:
            raise PretrainedError(f"head: must be one of {', '.join(HEADS)}, got {self.head!r}")
        if not os.path.isfile(self.path):
            raise PretrainedError(
                f"path: no file {self.path!r}; pass a vit_jax .npz (e.g. Mixer-B_16.npz), an "
                "official iMixer or paramixer .pth, or an .npz of ours"
            )


def check(init: InitFrom, model: ModelConfig, params: nnx.State, rest: nnx.State) -> None:
    """Check ``init``'s file against the abstract ``params`` and ``rest`` of a model of ``model``
    (e.g. the trainer's ``setup.abstract_state``) from the file's headers only: format, model
    settings, every name and shape.

    Raises:
      PretrainedError: one line naming what does not fit.
    """
    weights = read(init.path, format=init.format, shapes_only=True)
    place(weights, params, rest, model, head=init.head, source=repr(init.path), check_only=True)


def apply_init(
    init: InitFrom, model: ModelConfig, params: nnx.State, rest: nnx.State
) -> tuple[nnx.State, nnx.State]:
    """``(params, rest)`` of a model of ``model`` initialised from ``init``'s file: the trainer
    calls it on the freshly initialised state."""
    weights = read(init.path, format=init.format)
    return place(weights, params, rest, model, head=init.head, source=repr(init.path))
