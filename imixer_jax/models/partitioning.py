"""How the models' arrays split over a ``('data', 'model')`` device mesh (docs/design.md#sharding).

Parameters declare their own split as Flax sharding metadata (``out_sharding``: one mesh-axis name
or None per dimension, read with ``nnx.get_partition_spec``), set where each parameter is created:

* Megatron-style pairs on ``MODEL``: the first Linear of every MLP splits its output features
  (``COLUMN``: kernel ``[in, out]`` on (None, 'model'), bias on ('model',)), the second its input
  features (``ROW``: kernel on ('model', None), bias replicated), so the hidden activations stay
  split between the two and one reduction over 'model' ends the MLP. A tied MLP's one kernel
  W ``[N, K]`` is ``COLUMN`` (W^T g(W x) contracts the split K on the way back).
* The patch stem splits its output channels, the head its input channels (both are above a
  million elements in the largest variants).
* LayerNorms, second-layer biases and the spectral-norm vectors u, v are replicated, declared so.

``eager_sharding=False``: a model built outside a mesh (tests, conversion, analysis) is an
ordinary model; the trainer resolves the declared specs against its mesh (an axis that does not
divide a dimension is dropped) and may add a 'data' split on top (FSDP). With ``scan_blocks`` the
stacked axis is inserted unsplit (``Backbone``'s ``nnx.vmap``, ``STACKED``).

``shard_residual`` constrains the residual stream between the MLPs (sequence parallelism):
channels split where a token mixer reads it, tokens split where a channel MLP does. Each half
then runs on its shard with its weights all-gathered (``gather_weights``; the hidden activations
of a channel MLP are constrained like the stream), so no activation is ever held whole on a chip;
left to itself, XLA's TPU partitioner follows the weights' split instead and all-gathers the
activations (docs/pod_scale.md#a-model-axis).
"""

from __future__ import annotations

import math

import jax
from flax import nnx
from jax.sharding import PartitionSpec

Array = jax.Array

DATA, MODEL = "data", "model"
# nnx.vmap / nnx.scan metadata for the stacked block axis of the scan_blocks layout: unsplit.
STACKED = {nnx.PARTITION_NAME: None}


def split(*axes: str | None) -> dict:
    """Variable metadata declaring the split of an array: one mesh-axis name or None per
    dimension (all None: replicated)."""
    return {"out_sharding": axes, "eager_sharding": False}


COLUMN = {"kernel": split(None, MODEL), "bias": split(MODEL)}
ROW = {"kernel": split(MODEL, None), "bias": split(None)}
REPLICATED_VECTOR = split(None)


def linear_metadata(parallel: str) -> dict:
    """``kernel_metadata`` and ``bias_metadata`` of an MLP Linear: ``parallel`` is 'column'
    (the first layer of a Megatron pair) or 'row' (the second)."""
    halves = {"column": COLUMN, "row": ROW}[parallel]
    return {"kernel_metadata": halves["kernel"], "bias_metadata": halves["bias"]}


def residual_spec(
    shape: tuple[int, ...], mesh_shape: dict[str, int], split: str
) -> PartitionSpec | None:
    """Spec of the residual stream ``[B, S, D]`` on a mesh with axis sizes ``mesh_shape``, or
    None where there is no model axis (> 1) to split it over.

    Batch on 'data'; on 'model' the axis ``split`` names, 'channels' (D) where the token mixer
    reads the stream, 'tokens' (S) where the channel MLP does: the token mixer mixes each channel
    on its own and the channel MLP each token (and the Mixer's LayerNorms normalise each token),
    so each half runs on its shard with its weights gathered, and the stream between them changes
    hands in one all-to-all. The other axis where 'model' does not divide the named one (the 7 x 7
    tokens of the /32 variants); neither: left whole.
    """
    m = mesh_shape.get(MODEL, 1)
    if m == 1:
        return None
    batch, tokens, channels = shape
    data = DATA if batch % mesh_shape.get(DATA, 1) == 0 else None
    on_tokens, on_channels = PartitionSpec(data, MODEL, None), PartitionSpec(data, None, MODEL)
    order = {"tokens": (on_tokens, on_channels), "channels": (on_channels, on_tokens)}[split]
    for spec, size in zip(order, (tokens, channels) if split == "tokens" else (channels, tokens)):
        if size % m == 0:
            return spec
    return PartitionSpec(data, None, None)


def shard_residual(x: Array, split: str) -> Array:
    """``x [B, S, D]`` constrained to ``residual_spec(..., split)`` of the ambient mesh
    (``jax.sharding.use_abstract_mesh``, which the trainer's steps set); unchanged without one
    or without a model axis."""
    mesh = jax.sharding.get_abstract_mesh()
    spec = None if mesh.empty else residual_spec(x.shape, dict(mesh.shape), split)
    return x if spec is None else jax.lax.with_sharding_constraint(x, spec)


def gather_weights(tree, x_shape: tuple[int, ...], split: str):
    """The arrays of ``tree`` (the weights a half of the block reads the residual stream
    ``x [B, S, D]`` with) constrained replicated, i.e. all-gathered before use, where the
    ambient mesh splits ``x`` on the axis ``split`` names (``residual_spec``): the half mixes
    along the other axis, so it runs on its shard of ``x`` and only the weights move (their
    gradients are reduce-scattered back to the parameters' split). Unchanged without a model
    axis or where the stream falls back to the other axis (the weights' Megatron split then
    keeps the hidden activations split)."""
    mesh = jax.sharding.get_abstract_mesh()
    spec = None if mesh.empty else residual_spec(x_shape, dict(mesh.shape), split)
    axis = {"tokens": 1, "channels": 2}[split]
    if spec is None or spec[axis] != MODEL:
        return tree
    return jax.tree.map(
        lambda a: jax.lax.with_sharding_constraint(a, PartitionSpec(*(None,) * a.ndim)), tree
    )


def batch_spec(mesh_shape: dict[str, int]) -> PartitionSpec:
    """Split of a batch's leading axis on a mesh with axis sizes ``mesh_shape``: over 'data' and
    'model' together where there is a model axis (> 1), so every chip holds its own examples;
    over 'data' alone otherwise. The trainer's batch arrives split this way
    (``training.sharding.batch_sharding``) and the stem keeps it so (``shard_batch``)."""
    if mesh_shape.get(MODEL, 1) == 1:
        return PartitionSpec(DATA)
    return PartitionSpec(tuple(a for a in (DATA, MODEL) if a in mesh_shape))


def shard_batch(x: Array) -> Array:
    """``x [B, ...]`` constrained to a batch split over 'data' and 'model' together where a
    model axis (> 1) is present and the mesh divides B; unchanged otherwise.

    For the patch stem: its input images and output patches are the largest activations of a
    small model, and held on the data split alone every chip of a model group would keep the
    images of the whole data shard. Split this way, the stem runs on its own images (its
    weights all-gathered) and the stream changes to its channel split in one all-to-all."""
    mesh = jax.sharding.get_abstract_mesh()
    sizes = {} if mesh.empty else dict(mesh.shape)
    if sizes.get(MODEL, 1) == 1 or x.shape[0] % math.prod(sizes.values()):
        return x
    return jax.lax.with_sharding_constraint(
        x, PartitionSpec(*batch_spec(sizes), *(None,) * (x.ndim - 1))
    )
