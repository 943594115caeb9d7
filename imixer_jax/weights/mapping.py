"""Placing a checkpoint's flat arrays into a model's state, every name and shape checked.

A checkpoint is a flat ``{key: array}`` dict; a model's state is an ``nnx.State`` whose leaves are
addressed by paths (tuples, as in ``nnx.to_pure_dict``). A format supplies ``key_of`` (our
per-block path -> its key, None where it has none) and optionally ``transform`` (e.g. torch's
``[out, in]`` -> our ``[in, out]``). Checkpoints are always in the per-block layout
(``blocks.i...``); a model built with ``scan_blocks`` (``('blocks', *rest)`` stacked along a
leading axis) is matched block by block and its arrays stacked.

``match`` checks a checkpoint against a state's shapes and returns the arrays to place
(``replace`` places them); the checkpoint's arrays may be shape-only stand-ins (``shape_only``), so
a file can be checked before anything is built or compiled.
"""

from __future__ import annotations

import math
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

Path = tuple


class PretrainedError(ValueError):
    """A checkpoint that does not fit the model (or cannot be read); the message is one line."""


def read_npz(path: str) -> dict[str, np.ndarray]:
    """Every entry of the ``.npz`` at ``path``, read without unpickling anything.

    Raises:
      PretrainedError: a damaged archive or object (pickled) arrays, in one line.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except ValueError as e:
        if "allow_pickle" not in str(e):
            raise PretrainedError(f"{path!r} is a damaged .npz ({e}); write it again") from None
        raise PretrainedError(
            f"{path!r} holds pickled (object) arrays, which are never loaded; save the weights "
            "as numeric arrays"
        ) from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise PretrainedError(
            f"{path!r} is a damaged .npz ({type(e).__name__}); write or download it again"
        ) from None


def shape_only(shape: Iterable[int], dtype=np.float32) -> np.ndarray:
    """A read-only array of ``shape`` that takes no memory (every element is the same zero):
    what a check needs of an array whose values have not been read."""
    return np.broadcast_to(np.zeros((), dtype), tuple(shape))


def dotted(path: Path) -> str:
    """``('blocks', 0, 'norm', 'scale')`` -> ``'blocks.0.norm.scale'``."""
    return ".".join(str(p) for p in path)


def flat_state(state: nnx.State | Mapping) -> dict[Path, object]:
    """``{path: leaf}`` of an ``nnx.State`` (or its pure dict)."""
    pure = nnx.to_pure_dict(state) if isinstance(state, nnx.State) else state
    return traverse_util.flatten_dict(pure)


def per_block(flat: Mapping[Path, object]) -> tuple[dict[Path, object], int | None]:
    """``(flat in the per-block layout, num_blocks if it was stacked else None)``: the stacked
    blocks of the scanned layout (``('blocks', *rest)``, leading axis N) become
    ``('blocks', i, *rest)``; abstract leaves become ``shape_only`` arrays."""
    stacked_paths = [p for p in flat if p[0] == "blocks" and not isinstance(p[1], int)]
    if not stacked_paths:
        return dict(flat), None
    num_blocks = flat[stacked_paths[0]].shape[0]
    out = {}
    for path, leaf in flat.items():
        if path not in stacked_paths:
            out[path] = leaf
            continue
        for i in range(num_blocks):
            if isinstance(leaf, np.ndarray | jax.Array):
                out[("blocks", i, *path[1:])] = np.asarray(leaf[i])
            else:
                out[("blocks", i, *path[1:])] = shape_only(leaf.shape[1:], leaf.dtype)
    return out, num_blocks


def stack_blocks(arrays: Mapping[Path, np.ndarray], num_blocks: int) -> dict[Path, np.ndarray]:
    """The inverse of ``per_block``: ``('blocks', i, *rest)`` stacked into ``('blocks', *rest)``."""
    out = {p: a for p, a in arrays.items() if p[0] != "blocks"}
    for rest in {p[2:] for p in arrays if p[0] == "blocks"}:
        out[("blocks", *rest)] = np.stack([arrays[("blocks", i, *rest)] for i in range(num_blocks)])
    return out


def match(
    target: Mapping[Path, object],
    flat: Mapping[str, np.ndarray],
    key_of: Callable[[Path], str | None],
    *,
    source: str,
    transform: Callable[[Path, np.ndarray], np.ndarray] | None = None,
    ignore: Callable[[str], bool] = lambda key: False,
) -> dict[Path, np.ndarray]:
    """``{path: array}`` for every leaf of ``target`` (``{path: leaf with a shape}``, either
    block layout; the result is in the same layout): ``flat[key_of(path)]`` after ``transform``,
    its shape checked against the leaf's. Every leaf must have a key present in ``flat``, and
    every key of ``flat`` must be used unless ``ignore(key)``. ``flat``'s arrays may be
    ``shape_only`` when only the check matters.

    Raises:
      PretrainedError: one line naming the first mismatch on both sides.
    """
    target, num_blocks = per_block(target)
    names = {path: key_of(path) for path in target}
    unnamed = [p for p, key in names.items() if key is None]
    if unnamed:
        raise PretrainedError(
            f"model parameter {dotted(unnamed[0])} has no counterpart in a {source} checkpoint; "
            "build the model the checkpoint was trained as"
        )
    if not set(names.values()) & set(flat):
        first = next(iter(flat), None)
        raise PretrainedError(
            f"{source} checkpoint holds none of this model's entries (its first is {first!r}, "
            f"the model's {next(iter(names.values()))!r}); pass a checkpoint of this architecture"
        )
    unused = sorted(set(flat) - set(names.values()) - {k for k in flat if ignore(k)})
    if unused:
        raise PretrainedError(
            f"{source} checkpoint entry {unused[0]!r} has no place in this model; build the model "
            "the checkpoint was trained as (same variant, token mixer and num_blocks)"
        )
    arrays = {}
    for path, leaf in target.items():
        key = names[path]
        if key not in flat:
            raise PretrainedError(
                f"{source} checkpoint lacks {key!r} (for {dotted(path)}); is it a complete "
                "checkpoint of this architecture?"
            )
        value = np.asarray(flat[key])
        if transform is not None:
            value = transform(path, value)
        if value.shape != tuple(leaf.shape):
            raise PretrainedError(
                f"{source} checkpoint entry {key!r} has shape {tuple(value.shape)} but "
                f"{dotted(path)} has {tuple(leaf.shape)}; build the model with the checkpoint's "
                "num_classes, img_size, patch_size and widths"
            )
        arrays[path] = value
    return arrays if num_blocks is None else stack_blocks(arrays, num_blocks)


def replace(state: nnx.State, arrays: Mapping[Path, np.ndarray]) -> nnx.State:
    """Copy of ``state`` whose leaves are ``arrays[path]`` cast to the leaf's dtype (every leaf
    must be there); ``state`` itself is left as it was."""
    leaves = flat_state(state)
    values = {p: jnp.asarray(arrays[p], dtype=leaf.dtype) for p, leaf in leaves.items()}
    new = jax.tree.map(lambda x: x, state)  # a new State: ``state`` is left as it was
    nnx.replace_by_pure_dict(new, traverse_util.unflatten_dict(values))
    return new


def fill(
    state: nnx.State,
    flat: Mapping[str, np.ndarray],
    key_of: Callable[[Path], str | None],
    *,
    check_only: bool = False,
    **kwargs,
) -> nnx.State | None:
    """``replace(state, match(state's leaves, flat, key_of, **kwargs))``; with ``check_only``
    only the check (``flat`` may hold ``shape_only`` arrays), returning None."""
    arrays = match(flat_state(state), flat, key_of, **kwargs)
    return None if check_only else replace(state, arrays)


def torch_backbone_fields(
    sd: Mapping, *, num_tokens: int, patch: int, num_classes: int, dim: int
) -> dict:
    """The backbone fields of a model config read off an official PyTorch state_dict (timm key
    names ``blocks.N.``): class count, image and patch size, block count, channels.

    Raises:
      PretrainedError: the tokens do not form a square grid of patches.
    """
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise PretrainedError(f"{num_tokens} tokens is not a square grid of patches")
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    return dict(
        num_classes=num_classes,
        img_size=side * patch,
        patch_size=patch,
        num_blocks=max(blocks) + 1,
        hidden_dim=dim,
    )
