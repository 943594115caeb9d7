"""Shared layers and initialisers of the Mixer backbone (official iMixer/timm init).

* Linear layers inside the token and channel MLPs (fc1, fc2, fc_sn1, fc_sn2, fc_c1, fc_c2):
  kernel xavier_uniform, bias normal(std 1e-6)  -> ``mlp_linear``.
* Classifier head: kernel and bias zero          -> ``head_linear``.
* Patch stem: Conv PxP stride P, kernel lecun_normal in timm's form (variance_scaling(1, fan_in,
  truncated normal at +-2 std with the std corrected by 0.8796...), which is exactly
  ``jax.nn.initializers.lecun_normal()``; fan_in = P*P*3), bias zero -> ``patch_stem``.
* LayerNorm: eps 1e-6, scale 1, bias 0           -> ``layer_norm``.
* Channel MLP D -> C -> D with exact (erf) GELU (tanh on request), built from the Hopfield core
                                                 -> ``ChannelMLP``.
* Hidden-neuron Lagrangian of an activation name -> ``hidden_lagrangian``.
* Drop path (stochastic depth): whole samples dropped, survivors scaled by 1/(1 - rate)
                                                 -> ``drop_path``.

Parameters are float32; ``dtype`` (e.g. ``jnp.bfloat16``) is the computation dtype. Every
parameter declares its split over a device mesh (``partitioning``).
"""

from __future__ import annotations

import jax
from flax import nnx

from imixer_jax.hopfield import Dense, HierarchicalNetwork, Layer, lagrangians
from imixer_jax.models import partitioning
from imixer_jax.models.partitioning import MODEL, REPLICATED_VECTOR, split

Array = jax.Array

MLP_KERNEL_INIT = jax.nn.initializers.xavier_uniform()
MLP_BIAS_INIT = jax.nn.initializers.normal(1e-6)
STEM_KERNEL_INIT = jax.nn.initializers.lecun_normal()
LAYER_NORM_EPS = 1e-6


def mlp_linear(
    in_features: int,
    out_features: int,
    *,
    parallel: str,
    rngs: nnx.Rngs,
    use_bias: bool = True,
    dtype=None,
) -> nnx.Linear:
    """Linear ``[..., in] -> [..., out]`` of a token or channel MLP: kernel ``[in, out]``
    xavier_uniform, bias ``[out]`` normal(1e-6); ``parallel`` 'column' (first layer of the MLP)
    or 'row' (second) declares its split on 'model' (``partitioning.linear_metadata``)."""
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        kernel_init=MLP_KERNEL_INIT,
        bias_init=MLP_BIAS_INIT,
        dtype=dtype,
        rngs=rngs,
        **partitioning.linear_metadata(parallel),
    )


def head_linear(in_features: int, num_classes: int, *, rngs: nnx.Rngs, dtype=None) -> nnx.Linear:
    """Classifier head ``[..., D] -> [..., num_classes]`` with zero kernel and zero bias; the
    kernel split over D on 'model' (D divides any model axis, a class count may not)."""
    return nnx.Linear(
        in_features,
        num_classes,
        kernel_init=jax.nn.initializers.zeros,
        bias_init=jax.nn.initializers.zeros,
        dtype=dtype,
        rngs=rngs,
        kernel_metadata=split(MODEL, None),
        bias_metadata=REPLICATED_VECTOR,
    )


def layer_norm(dim: int, *, rngs: nnx.Rngs, dtype=None) -> nnx.LayerNorm:
    """LayerNorm over the last axis ``[..., dim]``: eps 1e-6, scale ``[dim]`` = 1, bias = 0;
    replicated."""
    return nnx.LayerNorm(
        dim,
        epsilon=LAYER_NORM_EPS,
        dtype=dtype,
        rngs=rngs,
        scale_metadata=REPLICATED_VECTOR,
        bias_metadata=REPLICATED_VECTOR,
    )


def patch_stem(patch_size: int, dim: int, *, rngs: nnx.Rngs, dtype=None) -> nnx.Conv:
    """Patch embedding: ``[B, H, W, 3] -> [B, H/P, W/P, D]`` (Conv PxP, stride P, VALID);
    kernel ``[P, P, 3, D]`` lecun_normal (timm form), bias ``[D]`` zero; both split over D on
    'model'."""
    return nnx.Conv(
        3,
        dim,
        kernel_size=(patch_size, patch_size),
        strides=(patch_size, patch_size),
        padding="VALID",
        kernel_init=STEM_KERNEL_INIT,
        bias_init=jax.nn.initializers.zeros,
        dtype=dtype,
        rngs=rngs,
        kernel_metadata=split(None, None, None, MODEL),
        bias_metadata=split(MODEL),
    )


def hidden_lagrangian(activation: str, approximate_gelu: bool = False) -> lagrangians.Lagrangian:
    """The Lagrangian whose gradient is ``activation`` (a name of ``lagrangians.get``); GELU in
    its tanh form with ``approximate_gelu``."""
    if activation == "gelu":
        return lagrangians.GELU(approximate=approximate_gelu)
    return lagrangians.get(activation)


class ChannelMLP(nnx.Module):
    """Channel MLP ``[B, S, D] -> [B, S, D]``: fc_c2(GELU(fc_c1(LN x))), the reduced update of a
    two-layer Hopfield network (``network``) as the token MLP is: a visible ``[S, D]`` layer whose
    Lagrangian is the block's LayerNorm over D, a hidden GELU layer ``[S, C]``, one untied
    synapse (feedforward ``fc_c1``, feedback ``fc_c2``). The LayerNorm's parameters belong to
    the block (``norm``), as in the official code.

    Params: ``fc_c1`` (kernel ``[D, C]``, bias ``[C]``),
    ``fc_c2`` (kernel ``[C, D]``, bias ``[D]``). ``approximate_gelu``: the tanh GELU.
    """

    def __init__(
        self, dim: int, mlp_dim: int, *, approximate_gelu: bool = False, dtype=None, rngs: nnx.Rngs
    ):
        self.fc_c1 = mlp_linear(dim, mlp_dim, parallel="column", dtype=dtype, rngs=rngs)
        self.fc_c2 = mlp_linear(mlp_dim, dim, parallel="row", dtype=dtype, rngs=rngs)
        self.approximate_gelu = approximate_gelu
        self.dtype = dtype

    def network(self, norm: nnx.LayerNorm, visible_shape: tuple[int, int]) -> HierarchicalNetwork:
        """The two-layer network on visible states ``[S, D]`` (``norm``'s LayerNorm Lagrangian,
        ``[S, C]`` hidden), with the arithmetic of ``norm`` and of the ``nnx.Linear`` layers: the
        one-pass variance (``fast_variance``), parameters cast to ``dtype``."""
        cast = (lambda a: a) if self.dtype is None else (lambda a: a.astype(self.dtype))
        visible = lagrangians.LayerNorm(
            gamma=cast(norm.scale[...]),
            delta=cast(norm.bias[...]),
            eps=norm.epsilon,
            axis=-1,
            fast_variance=True,
        )
        num_tokens, _ = visible_shape
        synapse = Dense(
            weight=self.fc_c1.kernel[...],
            feedback=self.fc_c2.kernel[...],
            forward_bias=self.fc_c1.bias[...],
            feedback_bias=self.fc_c2.bias[...],
            dtype=self.dtype,
        )
        hidden = Layer(
            hidden_lagrangian("gelu", self.approximate_gelu),
            (num_tokens, self.fc_c1.kernel[...].shape[1]),
        )
        return HierarchicalNetwork(
            (Layer(visible, visible_shape, dtype=self.dtype), hidden), (synapse,)
        )

    def __call__(self, x: Array, norm: nnx.LayerNorm) -> Array:
        """``x: [B, S, D] -> [B, S, D]``, the visible layer's LayerNorm from ``norm``. Under a
        model axis the hidden state ``[B, S, C]`` and the output are split on tokens like the
        residual stream it reads (``partitioning.shard_residual``), so each chip works on its own
        tokens with the weights gathered."""
        if self.dtype is not None:
            x = x.astype(self.dtype)
        net = self.network(norm, x.shape[1:])
        fast, _ = net.solve_fast_layers(x)
        fast = jax.tree.map(lambda h: partitioning.shard_residual(h, "tokens"), fast)
        return partitioning.shard_residual(net.reduced_current(x, fast), "tokens")


def drop_path(rate: float) -> nnx.Dropout:
    """Stochastic depth on ``[B, S, D]`` residual branches: per sample, the whole branch is zeroed
    with probability ``rate`` or scaled by ``1 / (1 - rate)``. The key comes at call time
    (``rngs`` argument, stream ``'dropout'``); ``model.eval()`` makes it the identity."""
    return nnx.Dropout(rate, broadcast_dims=(1, 2), rng_collection="dropout")
