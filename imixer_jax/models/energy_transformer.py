"""The Energy Transformer classifier (Hoover et al. 2023) on the Hopfield core's attention block.

    images [B, H, W, 3] -> Conv PxP stride P (3 -> D) + position embedding -> X [B, S, D]
    N x EnergyBlock:  X <- n_iter descent steps on the block's energy
    LayerNorm -> mean over tokens [B, D] -> head (zero init) -> logits [B, num_classes]

Each ``EnergyBlock`` is one network of ``hopfield.attention.block``: the tokens ``[S, D]`` with a
LayerNorm Lagrangian (scalar gain, bias ``[D]``), multi-head attention on them (``query``,
``key`` ``[H, Y, D]``, beta = 1 / sqrt(Y)) and a Hopfield memory of K neurons per token
(``memory`` ``[D, K]``, ``activation`` its Lagrangian's gradient, ReLU in the Energy Transformer).
The memories are fast (closed form), and a descent step of the tokens is

    X <- X + step_size I(X)          (update_rule='residual': the Energy Transformer's x -= a dE/dg)
    X <- X + step_size (I(X) - X)    (update_rule='euler': the core's reduced dynamics)

with I the attention and memory currents into the tokens (``Network.reduced_currents``); both
lower the block's energy for a small step (docs/theory.md#attention-energies). The block's total
change passes through drop path. Unlike the Mixers, the model has a learned position embedding
``[S, D]`` (attention alone does not see where a token is).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from imixer_jax.hopfield import Network, attention, reduction
from imixer_jax.models import layers
from imixer_jax.models.backbone import Backbone
from imixer_jax.models.configs import EnergyTransformerConfig
from imixer_jax.models.partitioning import MODEL, split

Array = jax.Array

LAYER_NORM_EPS = 1e-5  # the Energy Transformer's EnergyLayerNorm
KERNEL_INIT = jax.nn.initializers.lecun_normal(in_axis=-1, out_axis=(0, 1))  # [H, Y, D]: fan-in D
MEMORY_INIT = jax.nn.initializers.lecun_normal()  # [D, K]: fan-in D
POSITION_INIT = jax.nn.initializers.normal(0.02)


class EnergyBlock(nnx.Module):
    """One Energy Transformer block on ``[B, S, D]``: ``n_iter`` descent steps of one network.

    Params: ``scale`` ``[]`` (the LayerNorm's scalar gain, 1) and ``bias`` ``[D]`` (0), ``query``
    and ``key`` ``[H, Y, D]`` (lecun_normal over D), ``memory`` ``[D, K]`` (lecun_normal).
    """

    def __init__(self, config: EnergyTransformerConfig, *, rngs: nnx.Rngs):
        c = config
        shape = (c.num_heads, c.head_dim, c.hidden_dim)
        # Each head's query/key features Y split on 'model' (Y = 64 divides any model axis up to 64;
        # the head counts 6, 12, 16 do not), the memories as the first layer of a Megatron pair;
        # the LayerNorm's gain and bias replicated.
        self.scale = nnx.Param(jnp.ones((), jnp.float32), **split())
        self.bias = nnx.Param(jnp.zeros((c.hidden_dim,), jnp.float32), **split(None))
        heads = split(None, MODEL, None)
        self.query = nnx.Param(KERNEL_INIT(rngs.params(), shape, jnp.float32), **heads)
        self.key = nnx.Param(KERNEL_INIT(rngs.params(), shape, jnp.float32), **heads)
        memory = MEMORY_INIT(rngs.params(), (c.hidden_dim, c.num_memories))
        self.memory = nnx.Param(memory, **split(None, MODEL))
        self.drop_path = layers.drop_path(c.drop_path_rate)
        self.num_tokens = c.num_tokens
        self.n_iter = c.n_iter
        self.step_size = c.step_size
        self.update_rule = c.update_rule
        self.self_mask = c.self_mask
        self.memory_lagrangian = layers.hidden_lagrangian(c.activation, c.approximate_gelu)

    def network(self) -> Network:
        """The block's network (``hopfield.attention.block``) on unbatched tokens ``[S, D]``."""
        return attention.block(
            self.num_tokens,
            self.query[...],
            self.key[...],
            self.memory[...],
            gamma=self.scale[...],
            delta=self.bias[...],
            eps=LAYER_NORM_EPS,
            self_mask=self.self_mask,
            memory_lagrangian=self.memory_lagrangian,
        )

    def __call__(self, x: Array, *, rngs: nnx.Rngs | None = None) -> Array:
        """``x: [B, S, D] -> [B, S, D]`` after ``n_iter`` descent steps (float32), in a rolled
        ``lax.fori_loop``: XLA compiles one step, so compile time does not grow with n_iter."""
        net = self.network()

        def step(_, x: Array) -> Array:
            fast, _ = reduction.solve_fast(net, {attention.TOKENS: x})
            current = reduction.reduced_currents(net, {attention.TOKENS: x}, fast)[attention.TOKENS]
            return x + self.step_size * (current if self.update_rule == "residual" else current - x)

        x0 = x.astype(jnp.float32)
        x = jax.lax.fori_loop(0, self.n_iter, step, x0)
        return x0 + self.drop_path(x - x0, rngs=rngs)


class EnergyTransformer(Backbone):
    """Classifier ``images [B, img_size, img_size, 3] -> logits [B, num_classes]`` of an
    ``EnergyTransformerConfig``: the ``Backbone`` with ``EnergyBlock``s and a position embedding
    ``pos_embed`` ``[S, D]`` (normal 0.02) added to the stem's tokens."""

    config_class = EnergyTransformerConfig

    def __init__(self, config: EnergyTransformerConfig, *, rngs: nnx.Rngs):
        super().__init__(config, rngs=rngs)
        shape = (config.num_tokens, config.hidden_dim)
        self.pos_embed = nnx.Param(
            POSITION_INIT(rngs.params(), shape, jnp.float32), **split(None, None)
        )

    @staticmethod
    def make_block(config: EnergyTransformerConfig, rngs: nnx.Rngs) -> EnergyBlock:
        """One ``EnergyBlock`` of ``config``."""
        return EnergyBlock(config, rngs=rngs)

    def embed(self, images: Array) -> Array:
        """Patch stem plus position embedding: ``[B, img_size, img_size, 3] -> [B, S, D]``."""
        return super().embed(images) + self.pos_embed[...]
