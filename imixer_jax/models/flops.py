"""Analytic forward FLOPs of a model config (matmuls only, 2 per multiply-add).

LayerNorm, GELU, softmax and the spectral norm's power iteration (O(T H n_power) per step) are left
out. With S = (img/P)^2 tokens, D hidden, T token-MLP, C channel-MLP, H = int(T * hidden_ratio),
N blocks, K classes:

    forward per image = 2 S (3 P^2) D                      patch stem
                      + N [4 D S T                         token MLP fc1, fc2
                           + n_iter * 4 D T H              iMLP fc_sn1, fc_sn2 per iteration
                           + 4 S D C]                      channel MLP fc_c1, fc_c2
                      + 2 D K                              head

The parallelized Mixer family (``paramixer_*``, ``symmixer_*``, ...) runs each block's token and
channel MLPs ``repeats`` times (the ``_ni`` variants); an asymmetric MLP has three matmuls, W_1 x,
W_1^T g and W_2 g, so its block term is 6 (D S T + S D C) per repeat instead of 4. The Energy
Transformer (H heads of Y neurons, M memories per token) runs ``n_iter`` descent steps per block,
each 8 S D H Y (keys, queries and their two back-projections) + 6 H S^2 Y (scores and the two
attention terms of the current) + 4 S D M (the memory and its feedback). A training
step costs about 3 x forward (the backward pass has one matmul for the input gradient and one for
the weight gradient per forward matmul).
"""

from __future__ import annotations

from imixer_jax.models.configs import ModelConfig


def forward_flops(config: ModelConfig) -> int:
    """Analytic matmul FLOPs of one image's forward pass through the model of ``config``."""
    c = config
    tokens, dim = c.num_tokens, c.hidden_dim
    stem = 2 * tokens * 3 * c.patch_size**2 * dim
    head = 2 * dim * c.num_classes
    if c.arch == "energy_transformer":
        attention = 8 * tokens * dim * c.num_heads * c.head_dim
        attention += 6 * c.num_heads * tokens**2 * c.head_dim
        block = c.n_iter * (attention + 4 * tokens * dim * c.num_memories)
        return stem + c.num_blocks * block + head
    token_dim, channel_dim = c.tokens_mlp_dim, c.channels_mlp_dim
    if c.arch == "paramixer":
        matmuls = 6 if c.mlp == "asymmetric" else 4
        block = c.repeats * matmuls * (dim * tokens * token_dim + tokens * dim * channel_dim)
    else:
        token_mixer = 4 * dim * tokens * token_dim
        if c.token_mixer == "imlp":
            hidden = int(token_dim * c.hidden_ratio)
            token_mixer += c.n_iter * 4 * dim * token_dim * hidden
        block = token_mixer + 4 * tokens * dim * channel_dim
    return stem + c.num_blocks * block + head
