"""Attention energies: multi-head attention as a synapse, and the Energy Transformer block.

Energy Transformer (Hoover et al. 2023, "Energy Transformer", arXiv 2302.07253). Tokens are a
layer ``[N, D]`` (N tokens of D neurons) whose Lagrangian is a LayerNorm over D per token, g =
LN(x). Head h projects every token to a key and a query of Y neurons, K_hB = W_K[h] g_B and Q_hC
= W_Q[h] g_C, and the attention energy is

    E_att = -(1/beta) sum_h sum_C log sum_{B in keys(C)} exp(beta <K_hB, Q_hC>)

with keys(C) every token, or every token but C itself (``self_mask``, the paper's B != C).
``MultiHeadAttention`` is this energy as a self-coupling synapse of one layer; its current
-dE/dg is written in closed form (P_h the softmax over the keys of beta A_h, A_hBC = <K_hB, Q_hC>)

    I_D = sum_h W_K[h]^T sum_C P_hDC Q_hC + W_Q[h]^T sum_B P_hBD K_hB,

the Energy Transformer's update, and equals ``jax.grad`` of the energy (tested). The Hopfield
memory of the block is a hidden layer ``[N, K]`` of K memories per token, coupled to the tokens by
a ``Dense`` synapse Xi ``[D, K]`` shared by the tokens; at its fixed point (x_m = g Xi) its
reduced energy is -(1/2) sum relu(g Xi)^2 with a ReLU Lagrangian, the Energy Transformer's
Hopfield network energy. ``block`` builds the two on one shared LayerNorm layer. The derivation
is in ``docs/theory.md#attention-energies``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from imixer_jax.hopfield import Dense, EnergySynapse, Layer, Network, dataclass, lagrangians

Array = jax.Array

TOKENS, MEMORIES = "tokens", "memories"  # the layer names of ``block``
ATTENTION, MEMORY = "attention", "memory"  # its synapse names


@dataclass
class MultiHeadAttention(EnergySynapse):
    """Multi-head attention energy on one layer of tokens ``[N, D]`` (a self-coupling).

    Attributes:
      query, key: kernels W_Q, W_K ``[H, Y, D]`` (H heads, Y neurons per key and query).
      beta: inverse temperature (a leaf: it can be learned); None is 1 / sqrt(Y), the Energy
        Transformer's.
      self_mask: exclude each token from its own keys (B != C; needs N >= 2).
      layer: the name of the token layer.

    ``energy`` and ``currents`` accept leading batch axes: ``g [..., N, D]``.
    """

    query: Array
    key: Array
    beta: float | Array | None = None
    self_mask: bool = struct.field(pytree_node=False, default=False)
    layer: str = struct.field(pytree_node=False, default=TOKENS)

    @property
    def layers(self) -> tuple[str, ...]:
        return (self.layer,)

    @property
    def inverse_temperature(self) -> float | Array:
        """beta, or 1 / sqrt(Y) when ``beta`` is None."""
        return 1.0 / math.sqrt(jnp.shape(self.key)[1]) if self.beta is None else self.beta

    def check(self, shapes: tuple[tuple[int, ...], ...]) -> None:
        (shape,) = shapes
        q, k = jnp.shape(self.query), jnp.shape(self.key)
        if len(q) != 3 or q != k:
            raise ValueError(
                f"attention on {self.layer!r}: query and key must both be [heads, Y, D], got "
                f"{q} and {k}"
            )
        if len(shape) != 2 or shape[1] != q[2]:
            raise ValueError(
                f"attention on {self.layer!r}: the layer must be [tokens, D={q[2]}] (the "
                f"kernels' last axis), got {shape}"
            )
        if self.self_mask and shape[0] < 2:
            raise ValueError(
                f"attention on {self.layer!r}: self_mask needs at least 2 tokens, got {shape[0]}"
            )

    def scores(self, g: Array) -> tuple[Array, Array, Array]:
        """``(beta A, K, Q)``: ``beta A [..., H, N_keys, N_queries]`` (-inf where masked), keys
        and queries ``[..., H, N, Y]``, from tokens ``g [..., N, D]``."""
        k = jnp.einsum("...nd,hyd->...hny", g, self.key)
        q = jnp.einsum("...nd,hyd->...hny", g, self.query)
        a = self.inverse_temperature * jnp.einsum("...hby,...hcy->...hbc", k, q)
        if self.self_mask:
            n = g.shape[-2]
            a = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, a)
        return a, k, q

    def energy(self, g: Array) -> Array:
        """E_att of tokens ``g [..., N, D]``: shape ``[...]`` (a scalar for one sample)."""
        a, _, _ = self.scores(g)
        lse = jax.nn.logsumexp(a, axis=-2)  # [..., H, N_queries]: over the keys of each query
        return -jnp.sum(lse, axis=(-2, -1)) / self.inverse_temperature

    def currents(self, g: Array) -> tuple[Array]:
        """``(-dE_att/dg,)`` in closed form, shaped like ``g [..., N, D]``."""
        a, k, q = self.scores(g)
        p = jax.nn.softmax(a, axis=-2)  # [..., H, keys B, queries C]
        grad_k = jnp.einsum("...hbc,...hcy->...hby", p, q)  # -dE/dK_hB = sum_C P_hBC Q_hC
        grad_q = jnp.einsum("...hbc,...hby->...hcy", p, k)  # -dE/dQ_hC = sum_B P_hBC K_hB
        current = jnp.einsum("...hny,hyd->...nd", grad_k, self.key)
        return (current + jnp.einsum("...hny,hyd->...nd", grad_q, self.query),)

    def current(self, index, gs, shapes) -> Array:
        """Closed form, any batch axes: ``currents`` of the batched tokens."""
        return self.currents(gs[0])[0]


def block(
    num_tokens: int,
    query: Array,
    key: Array,
    memory: Array,
    *,
    gamma: float | Array = 1.0,
    delta: float | Array = 0.0,
    eps: float = 1e-5,
    beta: float | Array | None = None,
    self_mask: bool = False,
    memory_lagrangian: lagrangians.Lagrangian | None = None,
) -> Network:
    """The Energy Transformer block as a network: attention and a Hopfield memory on one shared
    LayerNorm layer.

    Layers: ``tokens`` ``[N, D]`` (LayerNorm over D per token, scalar gain ``gamma``, bias
    ``delta`` ``[D]`` or scalar, ``eps``) and ``memories`` ``[N, K]`` (``memory_lagrangian``,
    default ReLU). Synapses: ``attention`` (``MultiHeadAttention(query, key [H, Y, D], beta,
    self_mask)`` on the tokens) and ``memory`` (``Dense`` ``memory [D, K]`` from the tokens to the
    memories, shared by the tokens).

    With the memories fast (``reduction.solve_fast``: closed form, they read only the tokens) the
    reduced energy is the Energy Transformer's E_att - (1/2) sum relu(g Xi)^2 plus the LayerNorm's
    neuron term, and ``reduction.reduced_descend`` never raises it for a small step.
    """
    dim, num_memories = jnp.shape(memory)
    lagrangian = lagrangians.LayerNorm(gamma=gamma, delta=delta, eps=eps, axis=-1)
    return Network(
        layers={
            TOKENS: Layer(lagrangian, (num_tokens, dim)),
            MEMORIES: Layer(memory_lagrangian or lagrangians.ReLU(), (num_tokens, num_memories)),
        },
        synapses={
            ATTENTION: MultiHeadAttention(query, key, beta, self_mask=self_mask, layer=TOKENS),
            MEMORY: Dense(memory, pre=TOKENS, post=MEMORIES),
        },
    )
