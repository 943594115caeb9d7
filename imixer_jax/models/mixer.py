"""MLP-Mixer / iMixer: the ``Backbone`` with Mixer blocks, built from a ``MixerConfig``
(official architecture; derivation in docs/theory.md).

    images [B, H, W, 3] -> Conv PxP stride P (3 -> D) -> X [B, S, D],  S = (H/P) * (W/P)
    N x MixerBlock:  X <- X + DropPath(token_mixer(X))            (the token mixer owns LN_1)
                     X <- X + DropPath(fc_c2(GELU(fc_c1(LN_2 X))))   (``ChannelMLP``)
    LayerNorm -> mean over tokens [B, D] -> head (zero init) -> logits [B, num_classes]

``token_mixer='mlp'`` is MLP-Mixer (``TokenMLP``), ``'imlp'`` is iMixer (``IMLP``). Token mixer and
channel MLP are both reduced updates of Hopfield networks built from the core; the channel MLP's
is a two-layer network whose visible layer has the block's LN_2 as Lagrangian. Drop path has the
same rate in every block (official iMixer).

Layouts (``Backbone``): by default ``blocks`` is an ``nnx.List`` of N blocks, applied in a
Python loop (XLA compiles N copies). ``scan_blocks=True`` stacks every block variable along a
leading axis of size N (``blocks/token_mixer/fc1/kernel [N, S, T]``, spectral-norm u, v
``[N, ...]``) and applies the blocks under ``nnx.scan``, so compile time does not grow with
depth; each block still draws its own drop-path mask and advances its own u, v. ``remat``
trades compute for memory: ``'activations'`` makes each token mixer save its neurons' states
(the matmul outputs) and compute their activations (LayerNorm, GELU) again in the backward pass
(``reduction.solve_fast(recompute=True)``; no matmul is repeated); ``'token_mixer'`` recomputes
each token mixer (the iMLP iterations) in the backward pass, ``'block'`` each whole block (with
``jax.checkpoint``); only the block inputs are saved.

Parameters are float32; ``dtype`` (``None`` = float32, or e.g. ``'bfloat16'``) is the
computation dtype; logits are always float32.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from imixer_jax.models import layers
from imixer_jax.models.backbone import Backbone
from imixer_jax.models.configs import MixerConfig
from imixer_jax.models.partitioning import shard_residual
from imixer_jax.models.spectral_norm import spectral_sigmas
from imixer_jax.models.token_mixers import IMLP, TokenMLP

Array = jax.Array


class MixerBlock(nnx.Module):
    """One Mixer block on ``[B, S, D]``.

    Submodules: ``token_mixer`` (returns the increment for X and owns its LayerNorm), ``norm``
    (LayerNorm over D, the Lagrangian of the channel MLP's visible layer), ``channel_mlp``
    (``fc_c1`` D -> C, ``fc_c2`` C -> D), ``drop_path``.
    """

    def __init__(
        self,
        token_mixer: TokenMLP | IMLP,
        dim: int,
        channels_mlp_dim: int,
        *,
        drop_path_rate: float = 0.0,
        remat_token_mixer: bool = False,
        approximate_gelu: bool = False,
        dtype=None,
        rngs: nnx.Rngs,
    ):
        self.token_mixer = token_mixer
        self.remat_token_mixer = remat_token_mixer
        self.norm = layers.layer_norm(dim, dtype=dtype, rngs=rngs)
        self.channel_mlp = layers.ChannelMLP(
            dim, channels_mlp_dim, approximate_gelu=approximate_gelu, dtype=dtype, rngs=rngs
        )
        self.drop_path = layers.drop_path(drop_path_rate)

    def __call__(self, x: Array, *, rngs: nnx.Rngs | None = None) -> Array:
        """``x: [B, S, D] -> [B, S, D]``.

        ``rngs`` (stream ``'dropout'``) is needed only in training mode with a drop-path rate > 0.
        """
        if self.remat_token_mixer:
            y = recompute_in_backward(self.token_mixer, x)
        else:
            y = self.token_mixer(x)
        x = shard_residual(x + self.drop_path(y, rngs=rngs), "tokens")
        return x + self.drop_path(self.channel_mlp(x, self.norm), rngs=rngs)


class Mixer(Backbone):
    """Mixer classifier ``images [B, img_size, img_size, 3] -> logits [B, num_classes]`` of a
    ``MixerConfig``: the ``Backbone`` with ``MixerBlock``s (``token_mixer`` ``TokenMLP`` or
    ``IMLP``). ``config.scan_blocks`` and ``config.remat`` choose the layout and
    rematerialisation (above).

    Like every NNX module with dropout, a new Mixer is in training mode (drop path active, power
    iteration running): call ``model.eval()`` for inference, or pass ``rngs`` when training.
    The token mixers' intermediates: ``capture_intermediates(model, images)``.
    """

    config_class = MixerConfig

    @staticmethod
    def layout(config: MixerConfig) -> tuple[bool, bool]:
        """``(scan_blocks, remat_blocks)``: ``config.scan_blocks``, ``config.remat == 'block'``."""
        return config.scan_blocks, config.remat == "block"

    def training_metrics(self) -> dict[str, Array]:
        """``sigma/<path>``: the spectral-norm sigma estimate ``[]`` of every iMLP layer."""
        return {f"sigma/{path}": s for path, s in spectral_sigmas(self).items()}

    @staticmethod
    def make_block(config: MixerConfig, rngs: nnx.Rngs) -> MixerBlock:
        """One ``MixerBlock`` of ``config``; the token mixer draws its parameters first."""
        return MixerBlock(
            _token_mixer(config, rngs),
            config.hidden_dim,
            config.channels_mlp_dim,
            drop_path_rate=config.drop_path_rate,
            remat_token_mixer=config.remat == "token_mixer",
            approximate_gelu=config.approximate_gelu,
            dtype=config.compute_dtype,
            rngs=rngs,
        )


def _token_mixer(config: MixerConfig, rngs: nnx.Rngs) -> TokenMLP | IMLP:
    c = config
    common = dict(
        activation=c.activation,
        approximate_gelu=c.approximate_gelu,
        tied=c.tied,
        update_rule=c.update_rule,
        step_size=c.step_size,
        recompute_activations=c.remat == "activations",
        dtype=c.compute_dtype,
        rngs=rngs,
    )
    if c.token_mixer == "mlp":
        return TokenMLP(c.num_tokens, c.hidden_dim, c.tokens_mlp_dim, **common)
    return IMLP(
        c.num_tokens,
        c.hidden_dim,
        c.tokens_mlp_dim,
        hidden_ratio=c.hidden_ratio,
        n_iter=c.n_iter,
        n_power=c.n_power,
        sn_coeff=c.sn_coeff,
        spectral_norm=c.spectral_norm,
        adjoint=c.adjoint,
        tol=c.tol,
        **common,
    )


def recompute_in_backward(module: nnx.Module, x: Array) -> Array:
    """``module(x)`` (a function of ``x`` and the module's variables) that saves only ``x`` and
    the variables for the backward pass, which runs the forward again to differentiate it.

    Written by hand because ``jax.checkpoint`` keeps its recomputation in the backward pass only
    through optimization barriers, which XLA:CPU removes before scheduling, so the recomputation
    was placed beside the forward and saved nothing (README, Performance). Here the recomputation
    reads ``x + 0 * ct``, a data dependency on the output's cotangent, so no compiler can run it
    before the backward pass reaches this module (a non-finite cotangent makes every gradient NaN,
    as it would anyway). Updates of non-parameter variables (spectral-norm u, v) are written back.
    """
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def apply(params, rest, x):
        inner = nnx.merge(graphdef, params, rest, copy=True)
        y = inner(x)
        return y, nnx.split(inner, nnx.Param, ...)[2]

    @jax.custom_vjp
    def run(params, rest, x):
        return apply(params, rest, x)

    def forward(params, rest, x):
        return apply(params, rest, x), (params, rest, x)

    def backward(saved, cotangents):
        params, rest, x = saved
        ct = cotangents[0]
        x = x + jnp.zeros((), x.dtype) * ct.ravel()[0].astype(x.dtype)
        _, vjp = jax.vjp(lambda p, x: apply(p, rest, x)[0], params, x)
        d_params, d_x = vjp(ct)
        return d_params, jax.tree.map(jnp.zeros_like, rest), d_x

    run.defvjp(forward, backward)
    y, new_rest = run(params, rest, x)
    nnx.update(module, new_rest)
    return y


def copy_variables(source: Mixer, target: Mixer) -> None:
    """Copy every variable (parameters and spectral-norm u, v) of ``source`` into ``target``, a
    Mixer of the same architecture in either block layout, stacking the per-block variables
    (``blocks/i/...`` -> ``blocks/...[i]``) or unstacking them as the layouts require."""
    state = nnx.to_pure_dict(nnx.state(source))
    blocks = state["blocks"]
    if source.scan_blocks and not target.scan_blocks:
        count = target.num_blocks
        state["blocks"] = {i: jax.tree.map(lambda a, i=i: a[i], blocks) for i in range(count)}
    elif target.scan_blocks and not source.scan_blocks:
        per_block = (blocks[i] for i in range(source.num_blocks))
        state["blocks"] = jax.tree.map(lambda *a: jnp.stack(a), *per_block)
    target_state = nnx.state(target)
    nnx.replace_by_pure_dict(target_state, state)
    nnx.update(target, target_state)


def capture_intermediates(module: nnx.Module, *args, **kwargs) -> tuple[Any, nnx.State]:
    """``module(*args, **kwargs)`` and the intermediates its token mixers sow, as an
    ``nnx.State`` of ``nnx.Intermediate`` by module path, e.g. for a ``Mixer``
    ``state['blocks'][i]['token_mixer']['residuals']`` (``[n_iter]``), ``...['steps']``,
    ``...['fc_sn1']['sigma']``, ``...['energy_before']`` (tied); see ``token_mixers``.

    Runs on ``nnx.view(module, sow_intermediates=True)`` (same arrays; ``module`` itself is left
    with sowing off) under ``nnx.capture``; combine with ``deterministic=True`` in that view or
    call ``module.eval()`` first for inference. Works inside ``nnx.jit``.
    """
    if any(isinstance(m, Backbone) and m.scan_blocks for _, m in nnx.iter_modules(module)):
        raise ValueError(
            "capture_intermediates needs the per-block layout: build the model with "
            "scan_blocks=False and copy the variables over with copy_variables"
        )
    view = nnx.view(module, sow_intermediates=True)
    return nnx.capture(view, nnx.Intermediate)(*args, **kwargs)
