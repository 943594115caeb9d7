"""The classifier shared by every architecture (docs/design.md#model-config):

    images [B, H, W, 3] -> Conv PxP stride P (3 -> D) -> X [B, S, D],  S = (H/P) * (W/P)
    num_blocks x block:  X <- block(X)                       (the architecture's own block)
    LayerNorm -> mean over tokens [B, D] -> head (zero init) -> logits [B, num_classes]

A subclass (``Mixer``, ``ParaMixer``) sets ``config_class`` and defines ``make_block`` (and
``layout`` if it offers the scanned or rematerialised layouts); this base builds the stem, the
block stack, the final norm and the head from the typed config, in that order (so parameters drawn
from the same ``Rngs`` do not depend on the subclass), and applies them.

Layouts: by default ``blocks`` is an ``nnx.List`` of the blocks, applied in a Python loop (XLA
compiles N copies). With ``scan_blocks`` every block variable is stacked along a leading axis of
size N and the blocks run under ``nnx.scan``, so compile time does not grow with depth; each block
still draws its own drop-path mask (the stacked axis of every variable is unsplit on a mesh).
Under a mesh with a 'model' axis the residual stream between blocks is split over channels
(``partitioning.shard_residual``; the blocks split it over tokens between their halves). Remat of
the blocks recomputes each whole block in the backward pass (``jax.checkpoint``; only the block
inputs are saved).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from imixer_jax.models import layers, partitioning
from imixer_jax.models.configs import ModelConfig

Array = jax.Array

SAVE_NOTHING = jax.checkpoint_policies.nothing_saveable


class Backbone(nnx.Module):
    """Classifier ``images [B, img_size, img_size, 3] -> logits [B, num_classes]`` (float32).

    Submodules: ``stem`` (Conv kernel ``[P, P, 3, D]``, bias ``[D]``), ``blocks``
    (``num_blocks`` blocks of ``make_block``; with ``scan_blocks`` one block whose variables have
    a leading ``[num_blocks]`` axis), ``norm`` (final LayerNorm over D), ``head`` (kernel
    ``[D, num_classes]``, bias ``[num_classes]``, zero init). ``config`` is the typed config the
    model was built from.

    Like every NNX module with dropout, a new model is in training mode (drop path active): call
    ``model.eval()`` for inference, or pass ``rngs`` when training.
    """

    config_class: ClassVar[type[ModelConfig]]

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} takes a {self.config_class.__name__}, got "
                f"{type(config).__name__}; build one with registry.model_config(name, ...) or "
                f"{self.config_class.__name__}(...)"
            )
        self.config = config
        self.img_size = config.img_size
        self.num_tokens = config.num_tokens
        self.num_blocks = config.num_blocks
        scan_blocks, self.remat_blocks = self.layout(config)
        self.scan_blocks = scan_blocks
        dtype = config.compute_dtype
        self.stem = layers.patch_stem(config.patch_size, config.hidden_dim, dtype=dtype, rngs=rngs)
        make_block = type(self).make_block

        def make(rngs: nnx.Rngs) -> nnx.Module:
            return make_block(config, rngs)

        if scan_blocks:
            vmap = nnx.vmap(make, in_axes=0, transform_metadata=partitioning.STACKED)
            self.blocks = nnx.split_rngs(splits=config.num_blocks)(vmap)(rngs)
        else:
            self.blocks = nnx.List(make(rngs) for _ in range(config.num_blocks))
        self.norm = layers.layer_norm(config.hidden_dim, dtype=dtype, rngs=rngs)
        self.head = layers.head_linear(
            config.hidden_dim, config.num_classes, dtype=dtype, rngs=rngs
        )

    @staticmethod
    def layout(config: ModelConfig) -> tuple[bool, bool]:
        """``(scan_blocks, remat_blocks)`` of ``config``; the per-block loop without remat here."""
        return False, False

    @staticmethod
    def make_block(config: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
        """One block ``[B, S, D] -> [B, S, D]`` (called ``block(x, rngs=rngs)``) of ``config``,
        parameters drawn from ``rngs``."""
        raise NotImplementedError

    def __call__(self, images: Array, *, rngs: nnx.Rngs | None = None) -> Array:
        """``images: [B, img_size, img_size, 3]`` (normalised to [-1, 1]) -> float32 logits
        ``[B, num_classes]``.

        ``rngs`` (stream ``'dropout'``) drives drop path in training mode (``model.train()``).
        """
        x = self.embed(images)
        apply = nnx.remat(_apply_block, policy=SAVE_NOTHING) if self.remat_blocks else _apply_block
        if self.scan_blocks:
            x = self._scan(apply, x, rngs)
        else:
            for block in self.blocks:
                x = partitioning.shard_residual(apply(block, x, rngs), "channels")
        x = self.norm(x).mean(axis=1)  # [B, D]
        return self.head(x).astype(jnp.float32)

    def _scan(self, apply: Callable, x: Array, rngs: nnx.Rngs | None) -> Array:
        """The stacked blocks on ``x [B, S, D]`` under ``nnx.scan``; block i draws its drop-path
        masks from the i-th of ``num_blocks`` keys split off ``rngs.dropout()``."""
        keys = None if rngs is None else jax.random.split(rngs.dropout(), self.num_blocks)

        @nnx.scan(in_axes=(nnx.Carry, 0, 0), out_axes=nnx.Carry)
        def body(x, block, key):
            x = apply(block, x, None if key is None else nnx.Rngs(dropout=key))
            return partitioning.shard_residual(x, "channels")

        return body(x, self.blocks, keys)

    def embed(self, images: Array) -> Array:
        """Patch stem: ``images [B, img_size, img_size, 3] -> tokens X [B, S, D]`` (the first
        block's input)."""
        expected = (self.img_size, self.img_size, 3)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(
                f"images must have shape [B, {', '.join(map(str, expected))}], "
                f"got {list(images.shape)}"
            )
        x = partitioning.shard_batch(
            self.stem(partitioning.shard_batch(images))
        )  # [B, H/P, W/P, D]
        x = x.reshape(x.shape[0], self.num_tokens, x.shape[-1])
        return partitioning.shard_residual(x, "channels")

    def penalty(self) -> Array:
        """A regulariser the trainer adds to the loss, a float32 scalar; 0 here."""
        return jnp.zeros((), jnp.float32)

    def training_metrics(self) -> dict[str, Array]:
        """Scalars ``[]`` the trainer logs beside the loss, as ``train/<name>``; none here."""
        return {}


def _apply_block(block: nnx.Module, x: Array, rngs: nnx.Rngs | None) -> Array:
    return block(x, rngs=rngs)
