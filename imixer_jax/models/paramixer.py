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
from -f^T M_v f <= 0 only by a term of order eps. ``update_rule='euler'`` is the exact Euler step
X <- X + step_size (f - X) instead, which lowers E~ for a small step and convex L_h.

Family (official names in ``registry``): ``block='serial'`` with plain MLPs is the vanilla Mixer
with symmetric layernorms (``vanillamixer``), ``'parallel'`` the parallelized Mixer
(``paramixer``), ``mlp='symmetric'`` ties the weights (``symmixer``), ``mlp='asymmetric'`` adds the
symmetry-breaking term W_2: y = W_1^T g(W_1 x) + W_2 g(W_1 x) (``asymmixer``), with the L2 penalty
lambda sum ||W_2||^2 returned by ``ParaMixer.penalty``. ``repeats`` applies each block again with
the same weights (``_ni2`` ... ``_ni4``). As the official code: no biases in the MLPs, LN scale and
bias ``[S, D]`` per element (``scalar_scale=True``: a scalar gain, needed for the energy to exist).

The blocks compute with the Hopfield graph core (``imixer_jax.hopfield``): ``ParallelBlock.network``
is the three-layer network above (``SerialBlock.networks``: two two-layer ones), with ``Dense``
token and channel synapses on the fc1 kernels, fc2 as the untied feedback kernel (vanilla) or the
one-way ``Directed`` W_2 (asymmetric); the hidden layers are set by ``reduction.solve_fast`` and
each branch's drive is the sum of its synapses' currents into the visible layer. The modules hold
only the parameters (paths and counts of the official models), and the arithmetic is bit for bit
that of the explicit MLPs (``tests/test_paramixer_pinned.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from imixer_jax.hopfield import Dense, Directed, Layer, Network, lagrangians, reduction
from imixer_jax.models import layers
from imixer_jax.models.backbone import Backbone
from imixer_jax.models.configs import ParaMixerConfig
from imixer_jax.models.partitioning import gather_weights, shard_residual, split

Array = jax.Array


VISIBLE, TOKENS, CHANNELS = "visible", "tokens", "channels"  # the block's layer names
# Synapse specs on the unbatched visible state [S, D]: the token synapse contracts S (shared by the
# D channels), the channel synapse contracts D (shared by the S tokens); *_BACK are the one-way
# hidden -> visible specs of the symmetry-breaking W_2. The token hidden layer (T x D) is stored
# channels-first, [D, T]: the layout the contraction produces, so no transpose runs between the
# two GEMMs (a [T, D] layout gives the same numbers but adds transposes and copies to the step).
TOKEN_SPEC, TOKEN_BACK = "sd,st->dt", "dt,ts->sd"
CHANNEL_SPEC, CHANNEL_BACK = "sd,dc->sc", "sc,cd->sd"


class TokenMatrixNorm(nnx.Module):
    """LayerNorm over the whole token matrix ``[B, S, D]`` (statistics over S and D together),
    eps 1e-6: the gradient of the visible layer's LayerNorm Lagrangian.

    Params: ``scale`` ``[S, D]`` (``[]`` when ``scalar_scale``) = 1, ``bias`` ``[S, D]`` = 0;
    replicated.
    """

    def __init__(self, num_tokens: int, dim: int, *, scalar_scale: bool = False):
        shape = (num_tokens, dim)
        scale_shape = () if scalar_scale else shape
        self.scale = nnx.Param(
            jnp.ones(scale_shape, jnp.float32), **split(*(None,) * len(scale_shape))
        )
        self.bias = nnx.Param(jnp.zeros(shape, jnp.float32), **split(None, None))

    def layer(self, dtype=None) -> Layer:
        """The visible layer ``[S, D]``: LayerNorm Lagrangian over the whole matrix (a
        per-element scale has an activation but no L_v), activations computed in float32 and
        handed to the synapses in ``dtype`` (None: float32)."""
        lagrangian = lagrangians.LayerNorm(
            gamma=self.scale[...], delta=self.bias[...], eps=layers.LAYER_NORM_EPS, axis=None
        )
        return Layer(lagrangian, self.bias[...].shape, dtype=dtype)

    def __call__(self, x: Array) -> Array:
        """``x: [B, S, D] -> LN(x) [B, S, D]`` in float32 (float64 for float64 ``x``)."""
        return self.layer().activation(_at_least_float32(x))


def _at_least_float32(x: Array) -> Array:
    """``x`` in float32, or float64 when it is (the visible layer's computation dtype)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _linear(n_in: int, n_out: int, parallel: str, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    return layers.mlp_linear(n_in, n_out, parallel=parallel, use_bias=False, dtype=dtype, rngs=rngs)


class _MLP(nnx.Module):
    """Parameters of one hidden layer of ``hidden`` neurons coupled to an axis of ``features``
    visible neurons, with activation g = grad L_h; ``synapses`` turns them into the core's
    synapses. ``fc1`` ``[N, K]`` and a second kernel ``fc2`` ``[K, N]`` are a Megatron pair, both
    split over K on 'model' (``partitioning``)."""

    def __init__(
        self,
        features: int,
        hidden: int,
        *,
        activation: str = "gelu",
        approximate_gelu: bool = False,
        dtype=None,
        rngs: nnx.Rngs,
    ):
        self.fc1 = _linear(features, hidden, "column", dtype, rngs)
        self.activation = activation
        self.approximate_gelu = approximate_gelu

    def hidden_lagrangian(self) -> lagrangians.Lagrangian:
        """L_h of the hidden neurons (its gradient is the activation)."""
        return layers.hidden_lagrangian(self.activation, self.approximate_gelu)

    def synapses(self, hidden: str, spec: str, back: str, dtype=None) -> dict:
        """``{name: synapse}`` between ``VISIBLE`` and layer ``hidden``, computing in ``dtype``
        (float32 kernels cast at each use): ``spec`` is the visible -> hidden einsum, ``back``
        the hidden -> visible one."""
        raise NotImplementedError


class VanillaMLP(_MLP):
    """fc2(g(fc1 x)), no biases (official ``vMlp``): an untied synapse, feedforward kernel
    ``fc1`` ``[N, K]``, feedback kernel ``fc2`` ``[K, N]``."""

    def __init__(self, features: int, hidden: int, *, dtype=None, rngs: nnx.Rngs, **kwargs):
        super().__init__(features, hidden, dtype=dtype, rngs=rngs, **kwargs)
        self.fc2 = _linear(hidden, features, "row", dtype, rngs)

    def synapses(self, hidden: str, spec: str, back: str, dtype=None) -> dict:
        weight, feedback = self.fc1.kernel[...], self.fc2.kernel[...]
        return {hidden: Dense(weight, feedback, pre=VISIBLE, post=hidden, spec=spec, dtype=dtype)}


class SymmetricMLP(_MLP):
    """W^T g(W x) with one kernel (official ``sMlp``, whose single weight is named fc2 there):
    a tied synapse. Params: ``fc1`` ``[N, K]``, used forward and transposed as feedback."""

    def synapses(self, hidden: str, spec: str, back: str, dtype=None) -> dict:
        weight = self.fc1.kernel[...]
        return {hidden: Dense(weight, pre=VISIBLE, post=hidden, spec=spec, dtype=dtype)}


class AsymmetricMLP(SymmetricMLP):
    """W_1^T g(W_1 x) + W_2 g(W_1 x) (official ``aMlp``): the tied synapse W_1 (``fc1`` ``[N,
    K]``) and the symmetry-breaking W_2 (``fc2`` ``[K, N]``), a one-way hidden -> visible synapse
    named ``<hidden>_w2``. The energy is that of the tied part (W_2 is a non-conservative
    force)."""

    def __init__(self, features: int, hidden: int, *, dtype=None, rngs: nnx.Rngs, **kwargs):
        super().__init__(features, hidden, dtype=dtype, rngs=rngs, **kwargs)
        self.fc2 = _linear(hidden, features, "row", dtype, rngs)

    def synapses(self, hidden: str, spec: str, back: str, dtype=None) -> dict:
        w2 = Directed(self.fc2.kernel[...], pre=hidden, post=VISIBLE, spec=back, dtype=dtype)
        return {**super().synapses(hidden, spec, back, dtype), f"{hidden}_w2": w2}


_MLP_CLASSES = {"vanilla": VanillaMLP, "symmetric": SymmetricMLP, "asymmetric": AsymmetricMLP}


class _Block(nnx.Module):
    """Shared parts of the serial and parallel blocks on ``[B, S, D]``: ``mlp_tokens`` (S -> T
    -> S along the token axis), ``mlp_channels`` (D -> C -> D), drop path, the update rule and
    ``repeats`` weight-tied applications. The block's arithmetic is that of its Hopfield network(s):
    the visible layer X ``[S, D]`` coupled to a token hidden layer (T x D, stored ``[D, T]``)
    and/or a channel hidden layer ``[S, C]``."""

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        tokens_mlp_dim: int,
        channels_mlp_dim: int,
        *,
        mlp: str = "vanilla",
        activation: str = "gelu",
        approximate_gelu: bool = False,
        repeats: int = 1,
        update_rule: str = "residual",
        step_size: float = 1.0,
        drop_path_rate: float = 0.0,
        dtype=None,
        rngs: nnx.Rngs,
    ):
        mlp_class = _MLP_CLASSES[mlp]
        common = dict(
            activation=activation, approximate_gelu=approximate_gelu, dtype=dtype, rngs=rngs
        )
        self.mlp_tokens = mlp_class(num_tokens, tokens_mlp_dim, **common)
        self.mlp_channels = mlp_class(dim, channels_mlp_dim, **common)
        self.drop_path = layers.drop_path(drop_path_rate)
        self.repeats = repeats
        self.update_rule = update_rule
        self.step_size = step_size
        self.dtype = dtype

    def _network(self, norm: TokenMatrixNorm, hidden: tuple[str, ...], dtype) -> Network:
        """The visible layer of ``norm`` with the hidden layers named in ``hidden``."""
        (s, d), net_layers, synapses = norm.bias[...].shape, {VISIBLE: norm.layer(dtype)}, {}
        branches = {
            TOKENS: (self.mlp_tokens, lambda k: (d, k), TOKEN_SPEC, TOKEN_BACK),
            CHANNELS: (self.mlp_channels, lambda k: (s, k), CHANNEL_SPEC, CHANNEL_BACK),
        }
        for name in hidden:
            mlp, shape, spec, back = branches[name]
            net_layers[name] = Layer(mlp.hidden_lagrangian(), shape(mlp.fc1.kernel.shape[1]))
            synapses.update(mlp.synapses(name, spec, back, dtype))
        return Network(net_layers, synapses)

    def _step(self, x: Array, drive: Array, rngs: nnx.Rngs | None) -> Array:
        increment = drive if self.update_rule == "residual" else self.step_size * (drive - x)
        return x + self.drop_path(increment.astype(x.dtype), rngs=rngs)

    def __call__(self, x: Array, *, rngs: nnx.Rngs | None = None) -> Array:
        """``x: [B, S, D] -> [B, S, D]``: ``repeats`` updates with the same weights.

        ``rngs`` (stream ``'dropout'``) is needed only in training mode with drop path > 0.
        """
        for _ in range(self.repeats):
            x = self.update_once(x, rngs=rngs)
        return x


def drives(net: Network, x: Array, split: str | None = None) -> tuple[Array, ...]:
    """Reduced drive of each hidden layer of ``net`` on the visible state ``x: [B, S, D]``.

    The hidden layers read only the visible one, so ``reduction.solve_fast`` sets them in closed
    form (x_h = W_h g_v); each drive ``[B, S, D]`` is the sum of the currents of the synapses
    touching that hidden layer, in network order (tied or feedback kernel, then W_2).

    ``split``: the split of the residual stream ``x`` under a model axis ('channels' where a
    token layer reads it, 'tokens' where a channel layer does): the drives are constrained to it
    and the hidden states to their axis 1 (D of a token layer ``[B, D, T]``, S of a channel
    layer ``[B, S, C]``), so the half runs on its own shard (``partitioning.shard_residual``).
    """
    fast, _ = reduction.solve_fast(net, {VISIBLE: _at_least_float32(x)})
    if split is not None:
        fast = {h: shard_residual(state, "tokens") for h, state in fast.items()}  # axis 1
    gs = net.activations(fast)
    currents = tuple(
        net.current(VISIBLE, gs, {k: s for k, s in net.synapses.items() if h in s.layers})
        for h in fast
    )
    return currents if split is None else tuple(shard_residual(c, split) for c in currents)


class SerialBlock(_Block):
    """Vanilla Mixer block with symmetric layernorms (official ``vMixerBlock``)::

        X <- X + TokenMLP(LN_1 X);   X <- X + ChannelMLP(LN_2 X)

    i.e. the reduced updates of two two-layer networks in turn (``networks``).
    Params: ``norm1``, ``norm2`` (``TokenMatrixNorm``), ``mlp_tokens``, ``mlp_channels``.
    """

    def __init__(self, num_tokens: int, dim: int, *args, scalar_scale: bool = False, **kwargs):
        super().__init__(num_tokens, dim, *args, **kwargs)
        self.norm1 = TokenMatrixNorm(num_tokens, dim, scalar_scale=scalar_scale)
        self.norm2 = TokenMatrixNorm(num_tokens, dim, scalar_scale=scalar_scale)

    def networks(self, dtype=None) -> tuple[Network, Network]:
        """(visible LN_1 + token hidden layer, visible LN_2 + channel hidden layer), synapses and
        visible activations in ``dtype`` (None: float32)."""
        return self._network(self.norm1, (TOKENS,), dtype), self._network(
            self.norm2, (CHANNELS,), dtype
        )

    def update_once(self, x: Array, *, rngs: nnx.Rngs | None = None) -> Array:
        """One token update then one channel update: ``[B, S, D] -> [B, S, D]``."""
        token_net, channel_net = self.networks(self.dtype)
        # Under a model axis, as the Mixer block: the token half reads the stream split on
        # channels with its weights gathered, the channel half its token split with its hidden
        # state and drive split the same way (docs/design.md#sharding).
        (token,) = drives(gather_weights(token_net, x.shape, "channels"), x, split="channels")
        x = self._step(x, token, rngs)
        x = shard_residual(x, "tokens")
        (channel,) = drives(channel_net, x, split="tokens")
        return self._step(x, channel, rngs)


class ParallelBlock(_Block):
    """Parallelized Mixer block (official ``pMixerBlock``), the reduced update of the network
    (``network``)::

        X <- X + TokenMLP(LN X) + ChannelMLP(LN X)     (update_rule='residual', official)
        X <- X + step_size (TokenMLP(LN X) + ChannelMLP(LN X) - X)      (update_rule='euler')

    Token and channel branches get independent drop-path masks, as the official block.
    Params: ``norm`` (``TokenMatrixNorm``), ``mlp_tokens``, ``mlp_channels``.
    """

    def __init__(self, num_tokens: int, dim: int, *args, scalar_scale: bool = False, **kwargs):
        super().__init__(num_tokens, dim, *args, **kwargs)
        self.norm = TokenMatrixNorm(num_tokens, dim, scalar_scale=scalar_scale)

    def network(self, dtype=None) -> Network:
        """The three-layer network: visible ``[S, D]`` (``norm``), hidden ``tokens`` ``[D, T]``
        and ``channels`` ``[S, C]``; synapses and visible activations in ``dtype`` (None:
        float32)."""
        return self._network(self.norm, (TOKENS, CHANNELS), dtype)

    def drive(self, x: Array) -> Array:
        """Synaptic drive of the fast hidden layers on X: ``[B, S, D] -> [B, S, D]``."""
        token, channel = drives(self.network(self.dtype), x)
        return token + channel

    def update_once(self, x: Array, *, rngs: nnx.Rngs | None = None) -> Array:
        """One parallel update ``[B, S, D] -> [B, S, D]``."""
        if self.update_rule == "euler":
            return self._step(x, self.drive(x), rngs)
        token, channel = drives(self.network(self.dtype), x)
        x = x + self.drop_path(token.astype(x.dtype), rngs=rngs)
        return x + self.drop_path(channel.astype(x.dtype), rngs=rngs)


def reduced_energy(block: ParallelBlock, x: Array) -> Array:
    """E~(X) of a parallel block with tied (or asymmetric: their symmetric part) MLPs.

    ``x: [B, S, D] -> [B]`` (float32): the energy of ``block.network()`` without the one-way W_2
    synapses, at the hidden layers' closed-form fixed point; analytically the visible neuron
    term minus -L_h(W_t LN X) - L_h(W_c LN X).

    Raises:
      ValueError: a serial block or plain MLPs (no energy), or a per-element LayerNorm scale.
    """
    if not isinstance(block, ParallelBlock) or isinstance(block.mlp_tokens, VanillaMLP):
        raise ValueError(
            "reduced_energy needs a parallel block with mlp='symmetric' or 'asymmetric' "
            "(serial blocks and plain MLPs are not derived from one energy)"
        )
    if jnp.ndim(block.norm.scale[...]) != 0:
        raise ValueError(
            "reduced_energy needs a scalar LayerNorm gain (the energy of a per-element gain does "
            "not exist); build the block with scalar_scale=True"
        )
    net = block.network()
    net = net.replace(synapses={k: s for k, s in net.synapses.items() if s.tied})
    visible = {VISIBLE: _at_least_float32(x)}
    fast, _ = reduction.solve_fast(net, visible)
    return net.reduced_energy(visible, fast)


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
            approximate_gelu=config.approximate_gelu,
            repeats=config.repeats,
            update_rule=config.update_rule,
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
