"""The parallelized MLP-Mixer family (Karakida, Ota & Taki 2024, official code: paramixer).

Derivation (see ``docs/theory.md``). A three-layer hierarchical Hopfield network with

* a visible layer X ``[S, D]`` whose Lagrangian is one LayerNorm Lagrangian over the *whole*
  token matrix, L_v(X) = n gamma sqrt(Var(X) + eps) + <delta, X>, n = S * D, so that
  g_v = LN(X) normalises over tokens and channels together (the official ``nn.LayerNorm((S, D))``,
  the "symmetric layernorm");
* a token hidden layer ``[T, D]`` coupled to X by W_t (contracts the token axis, shared by the
  D channels) and a channel hidden layer ``[S, C]`` coupled by W_c (contracts the channel axis,
  shared by the S tokens), both with a Lagrangian L_h whose gradient is the activation g
  (GELU in the official models);

has the energy E = [<X, g_v> - L_v] + sum_h [<x_h, g_h> - L_h(x_h)] - <g_t, W_t g_v> -
<g_c, W_c g_v>. With fast hidden layers (adiabatic limit) x_t = W_t g_v, x_c = W_c g_v, and

    E~(X) = [<X, g_v> - L_v(X)] - L_h(W_t LN(X)) - L_h(W_c LN(X))             (``reduced_energy``)
    tau dX/dt = W_t^T g(W_t LN X) + W_c^T g(W_c LN X) - X.

The neuron term has the closed form <X, g_v> - L_v = -n gamma eps / sqrt(Var(X) + eps) (no float32
cancellation). One update of the drive is the parallel Mixer block

    X <- X + TokenMLP(LN X) + ChannelMLP(LN X)                                (``ParallelBlock``)

with tied MLPs W^T g(W x) (``SymmetricMLP``, the pure Hopfield model). The -X leak can be dropped
(the official residual update) because LN is invariant to X -> a X + b: the Hessian M_v of L_v
satisfies M_v X = gamma eps X_c / (Var + eps)^{3/2}, so dE~/dt along the residual drift differs
from -f^T M_v f <= 0 only by a term of order eps. ``update='euler'`` is the exact Euler step
X <- X + step_size (f - X) instead, which lowers E~ for a small step and convex L_h.

Family (official names in ``registry``): ``block='serial'`` with plain MLPs is the vanilla Mixer
with symmetric layernorms (``vanillamixer``), ``'parallel'`` the parallelized Mixer
(``paramixer``), ``mlp='symmetric'`` ties the weights (``symmixer``), ``mlp='asymmetric'`` adds the
symmetry-breaking term W_2: y = W_1^T g(W_1 x) + W_2 g(W_1 x) (``asymmixer``), with the L2 penalty
lambda sum ||W_2||^2 returned by ``ParaMixer.penalty``. ``n_iter`` repeats each block with the
same weights (``_ni2`` ... ``_ni4``). As the official code: no biases in the MLPs, LN scale and
bias ``[S, D]`` per element (``scalar_scale=True``: a scalar gain, needed for the energy to exist).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from imixer_jax.hopfield import lagrangians
from imixer_jax.models import layers
from imixer_jax.models.backbone import Backbone
from imixer_jax.models.configs import ParaMixerConfig

Array = jax.Array


class TokenMatrixNorm(nnx.Module):
    """LayerNorm over the whole token matrix ``[B, S, D]`` (statistics over S and D together),
    eps 1e-6: the gradient of the visible layer's LayerNorm Lagrangian.

    Params: ``scale`` ``[S, D]`` (``[]`` when ``scalar_scale``) = 1, ``bias`` ``[S, D]`` = 0.
    """

    def __init__(self, num_tokens: int, dim: int, *, scalar_scale: bool = False):
        shape = (num_tokens, dim)
        self.scale = nnx.Param(jnp.ones(() if scalar_scale else shape, jnp.float32))
        self.bias = nnx.Param(jnp.zeros(shape, jnp.float32))

    def lagrangian(self) -> lagrangians.LayerNorm:
        """L_v over a flattened ``[..., S * D]`` state (a per-element scale has no L_v)."""
        scale = self.scale[...]
        return lagrangians.LayerNorm(
            gamma=scale if scale.ndim == 0 else scale.reshape(-1),
            delta=self.bias[...].reshape(-1),
            eps=layers.LAYER_NORM_EPS,
        )

    def __call__(self, x: Array) -> Array:
        """``x: [B, S, D] -> LN(x) [B, S, D]`` in float32."""
        flat = x.astype(jnp.float32).reshape(x.shape[0], -1)
        return self.lagrangian().activation(flat).reshape(x.shape)


def neuron_energy(norm: TokenMatrixNorm, x: Array) -> Array:
    """Visible neuron term <X, g_v> - L_v(X) = -n gamma eps / sqrt(Var(X) + eps) per sample.

    ``x: [B, S, D] -> [B]``; the closed form avoids the float32 cancellation of the difference.
    """
    gamma = norm.scale[...]
    if gamma.ndim:
        raise ValueError(
            "the visible energy needs a scalar LayerNorm gain; build the model with "
            "scalar_scale=True"
        )
    x = x.astype(jnp.float32)
    var = jnp.var(x, axis=(1, 2))
    n = x.shape[1] * x.shape[2]
    return -n * gamma * layers.LAYER_NORM_EPS * jax.lax.rsqrt(var + layers.LAYER_NORM_EPS)


def _linear(n_in: int, n_out: int, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    return layers.mlp_linear(n_in, n_out, use_bias=False, dtype=dtype, rngs=rngs)


class _MLP(nnx.Module):
    """``[..., N] -> [..., N]`` through ``hidden`` neurons with activation g = grad L_h."""

    def __init__(
        self, features: int, hidden: int, *, activation: str = "gelu", dtype=None, rngs: nnx.Rngs
    ):
        self.fc1 = _linear(features, hidden, dtype, rngs)
        self.activation = activation

    def hidden_lagrangian(self) -> lagrangians.Lagrangian:
        """L_h of the hidden neurons (its gradient is the activation)."""
        return lagrangians.get(self.activation)

    def hidden(self, x: Array) -> Array:
        """Hidden activity g(W_1 x) ``[..., hidden]``."""
        return self.hidden_lagrangian().activation(self.fc1(x))


class VanillaMLP(_MLP):
    """fc2(g(fc1 x)), no biases (official ``vMlp``). Params: ``fc1`` ``[N, K]``, ``fc2``
    ``[K, N]``."""

    def __init__(self, features: int, hidden: int, *, dtype=None, rngs: nnx.Rngs, **kwargs):
        super().__init__(features, hidden, dtype=dtype, rngs=rngs, **kwargs)
        self.fc2 = _linear(hidden, features, dtype, rngs)

    def __call__(self, x: Array) -> Array:
        """``x: [..., N] -> [..., N]``."""
        return self.fc2(self.hidden(x))


class SymmetricMLP(_MLP):
    """W^T g(W x) with one kernel (official ``sMlp``, whose single weight is named fc2 there).
    Params: ``fc1`` ``[N, K]``, used forward and transposed as feedback."""

    def __call__(self, x: Array) -> Array:
        """``x: [..., N] -> [..., N]``."""
        h = self.hidden(x)
        return h @ self.fc1.kernel[...].T.astype(h.dtype)

    def energy(self, x: Array) -> Array:
        """Hidden layer at its fixed point: -L_h(W x), summed over all of ``x: [..., N]``, in
        float32 whatever the compute dtype."""
        return -self.hidden_lagrangian()(x.astype(jnp.float32) @ self.fc1.kernel[...])


class AsymmetricMLP(SymmetricMLP):
    """W_1^T g(W_1 x) + W_2 g(W_1 x) (official ``aMlp``): W_2 breaks the symmetry.
    Params: ``fc1`` ``[N, K]`` (W_1), ``fc2`` ``[K, N]`` (W_2). ``energy`` is that of the
    symmetric part (W_2 is a non-conservative force)."""

    def __init__(self, features: int, hidden: int, *, dtype=None, rngs: nnx.Rngs, **kwargs):
        super().__init__(features, hidden, dtype=dtype, rngs=rngs, **kwargs)
        self.fc2 = _linear(hidden, features, dtype, rngs)

    def __call__(self, x: Array) -> Array:
        """``x: [..., N] -> [..., N]``."""
        h = self.hidden(x)
        return h @ self.fc1.kernel[...].T.astype(h.dtype) + self.fc2(h)


_MLP_CLASSES = {"vanilla": VanillaMLP, "symmetric": SymmetricMLP, "asymmetric": AsymmetricMLP}


class _Block(nnx.Module):
    """Shared parts of the serial and parallel blocks on ``[B, S, D]``: ``mlp_tokens`` (S -> T
    -> S along the token axis), ``mlp_channels`` (D -> C -> D), drop path, the update rule and
    ``n_iter`` weight-tied repeats."""

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        tokens_mlp_dim: int,
        channels_mlp_dim: int,
        *,
        mlp: str = "vanilla",
        activation: str = "gelu",
        n_iter: int = 1,
        update: str = "residual",
        step_size: float = 1.0,
        drop_path_rate: float = 0.0,
        dtype=None,
        rngs: nnx.Rngs,
    ):
        mlp_class = _MLP_CLASSES[mlp]
        common = dict(activation=activation, dtype=dtype, rngs=rngs)
        self.mlp_tokens = mlp_class(num_tokens, tokens_mlp_dim, **common)
        self.mlp_channels = mlp_class(dim, channels_mlp_dim, **common)
        self.drop_path = layers.drop_path(drop_path_rate)
        self.n_iter = n_iter
        self.update = update
        self.step_size = step_size
        self.dtype = dtype

    def token_drive(self, g: Array) -> Array:
        """TokenMLP along the token axis: ``g: [B, S, D] -> [B, S, D]``."""
        return jnp.swapaxes(self.mlp_tokens(jnp.swapaxes(g, 1, 2)), 1, 2)

    def _step(self, x: Array, drive: Array, rngs: nnx.Rngs | None) -> Array:
        increment = drive if self.update == "residual" else self.step_size * (drive - x)
        return x + self.drop_path(increment.astype(x.dtype), rngs=rngs)

    def _cast(self, g: Array) -> Array:
        return g if self.dtype is None else g.astype(self.dtype)

    def __call__(self, x: Array, *, rngs: nnx.Rngs | None = None) -> Array:
        """``x: [B, S, D] -> [B, S, D]``: ``n_iter`` updates with the same weights.

        ``rngs`` (stream ``'dropout'``) is needed only in training mode with drop path > 0.
        """
        for _ in range(self.n_iter):
            x = self.update_once(x, rngs=rngs)
        return x


class SerialBlock(_Block):
    """Vanilla Mixer block with symmetric layernorms (official ``vMixerBlock``)::

        X <- X + TokenMLP(LN_1 X);   X <- X + ChannelMLP(LN_2 X)

    Params: ``norm1``, ``norm2`` (``TokenMatrixNorm``), ``mlp_tokens``, ``mlp_channels``.
    """

    def __init__(self, num_tokens: int, dim: int, *args, scalar_scale: bool = False, **kwargs):
        super().__init__(num_tokens, dim, *args, **kwargs)
        self.norm1 = TokenMatrixNorm(num_tokens, dim, scalar_scale=scalar_scale)
        self.norm2 = TokenMatrixNorm(num_tokens, dim, scalar_scale=scalar_scale)

    def update_once(self, x: Array, *, rngs: nnx.Rngs | None = None) -> Array:
        """One token update then one channel update: ``[B, S, D] -> [B, S, D]``."""
        x = self._step(x, self.token_drive(self._cast(self.norm1(x))), rngs)
        return self._step(x, self.mlp_channels(self._cast(self.norm2(x))), rngs)


class ParallelBlock(_Block):
    """Parallelized Mixer block (official ``pMixerBlock``), the reduced update of the network::

        X <- X + TokenMLP(LN X) + ChannelMLP(LN X)     (update='residual', official)
        X <- X + step_size (TokenMLP(LN X) + ChannelMLP(LN X) - X)      (update='euler')

    Token and channel branches get independent drop-path masks, as the official block.
    Params: ``norm`` (``TokenMatrixNorm``), ``mlp_tokens``, ``mlp_channels``.
    """

    def __init__(self, num_tokens: int, dim: int, *args, scalar_scale: bool = False, **kwargs):
        super().__init__(num_tokens, dim, *args, **kwargs)
        self.norm = TokenMatrixNorm(num_tokens, dim, scalar_scale=scalar_scale)

    def drive(self, x: Array) -> Array:
        """Synaptic drive of the fast hidden layers on X: ``[B, S, D] -> [B, S, D]``."""
        g = self._cast(self.norm(x))
        return self.token_drive(g) + self.mlp_channels(g)

    def update_once(self, x: Array, *, rngs: nnx.Rngs | None = None) -> Array:
        """One parallel update ``[B, S, D] -> [B, S, D]``."""
        if self.update == "euler":
            return self._step(x, self.drive(x), rngs)
        g = self._cast(self.norm(x))
        x = x + self.drop_path(self.token_drive(g).astype(x.dtype), rngs=rngs)
        return x + self.drop_path(self.mlp_channels(g).astype(x.dtype), rngs=rngs)


def reduced_energy(block: ParallelBlock, x: Array) -> Array:
    """E~(X) of a parallel block with tied (or asymmetric: their symmetric part) MLPs.

    ``x: [B, S, D] -> [B]``: visible neuron term minus the hidden Lagrangians at their
    closed-form fixed points, -L_h(W_t LN X) - L_h(W_c LN X) (float32).

    Raises:
      ValueError: a serial block or plain MLPs (no energy), or a per-element LayerNorm scale.
    """
    if not isinstance(block, ParallelBlock) or isinstance(block.mlp_tokens, VanillaMLP):
        raise ValueError(
            "reduced_energy needs a parallel block with mlp='symmetric' or 'asymmetric' "
            "(serial blocks and plain MLPs are not derived from one energy)"
        )
    visible = neuron_energy(block.norm, x)
    g = block.norm(x)

    def hidden(g: Array) -> Array:  # [S, D] -> []
        return block.mlp_tokens.energy(g.T) + block.mlp_channels.energy(g)

    return visible + jax.vmap(hidden)(g)


class ParaMixer(Backbone):
    """Mixer-family classifier ``images [B, img_size, img_size, 3] -> logits [B, num_classes]``
    of a ``ParaMixerConfig``: the ``Backbone`` with ``SerialBlock``s or ``ParallelBlock``s.

    ``config.asym_penalty`` is lambda of the symmetry-breaking L2 penalty (the official
    ``lcoeff``; only with ``mlp='asymmetric'``): the trainer adds ``penalty()`` to the loss. A new
    model is in training mode (drop path on): ``model.eval()`` for inference.
    """

    config_class = ParaMixerConfig

    @staticmethod
    def make_block(config: ParaMixerConfig, rngs: nnx.Rngs) -> SerialBlock | ParallelBlock:
        """One serial or parallel block of ``config``."""
        block_class = SerialBlock if config.block == "serial" else ParallelBlock
        return block_class(
            config.num_tokens,
            config.hidden_dim,
            config.tokens_mlp_dim,
            config.channels_mlp_dim,
            scalar_scale=config.scalar_scale,
            mlp=config.mlp,
            activation=config.activation,
            n_iter=config.n_iter,
            update=config.update,
            step_size=config.step_size,
            drop_path_rate=config.drop_path_rate,
            dtype=config.compute_dtype,
            rngs=rngs,
        )

    def penalty(self) -> Array:
        """lambda * sum over blocks of ||W_2||^2 (token and channel MLPs), a float32 scalar;
        0 unless ``mlp='asymmetric'`` and ``asym_penalty > 0``."""
        if not self.config.asym_penalty:
            return super().penalty()
        squares = [
            jnp.sum(jnp.square(mlp.fc2.kernel[...]))
            for block in self.blocks
            for mlp in (block.mlp_tokens, block.mlp_channels)
        ]
        return self.config.asym_penalty * sum(squares)
