"""MLP-Mixer / iMixer backbone (official architecture; derivation in docs/theory.md).

    images [B, H, W, 3] -> Conv PxP stride P (3 -> D) -> X [B, S, D],  S = (H/P) * (W/P)
    N x MixerBlock:  X <- X + DropPath(token_mixer(X))            (the token mixer owns LN_1)
                     X <- X + DropPath(fc_c2(GELU(fc_c1(LN_2 X))))
    LayerNorm -> mean over tokens [B, D] -> head (zero init) -> logits [B, num_classes]

``token_mixer='mlp'`` is MLP-Mixer (``TokenMLP``), ``'imlp'`` is iMixer (``IMLP``). Drop path has
the same rate in every block (official iMixer).

Layouts: by default ``blocks`` is an ``nnx.List`` of N blocks, applied in a Python loop (XLA
compiles N copies). ``scan_blocks=True`` stacks every block variable along a leading axis of
size N (``blocks/token_mixer/fc1/kernel [N, S, T]``, spectral-norm u, v ``[N, ...]``) and
applies the blocks under ``nnx.scan``, so compile time does not grow with depth; each block
still draws its own drop-path mask and advances its own u, v. ``remat`` trades compute for
memory with ``jax.checkpoint``: ``'token_mixer'`` recomputes each token mixer (the iMLP
iterations) in the backward pass, ``'block'`` each whole block; only the block inputs are saved.

Parameters are float32; ``dtype`` (``None`` = float32, or e.g. ``'bfloat16'``) is the
computation dtype; logits are always float32.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from imixer_jax.models import layers
from imixer_jax.models.token_mixers import IMLP, TokenMLP, check_arguments

Array = jax.Array

TOKEN_MIXERS = ("mlp", "imlp")
REMATS = ("none", "token_mixer", "block")


class MixerBlock(nnx.Module):
    """One Mixer block on ``[B, S, D]``.

    Submodules: ``token_mixer`` (returns the increment for X and owns its LayerNorm), ``norm``
    (LayerNorm over D), ``channel_mlp`` (``fc_c1`` D -> C, ``fc_c2`` C -> D), ``drop_path``.
    """

    def __init__(
        self,
        token_mixer: TokenMLP | IMLP,
        dim: int,
        channels_mlp_dim: int,
        *,
        drop_path_rate: float = 0.0,
        remat_token_mixer: bool = False,
        dtype=None,
        rngs: nnx.Rngs,
    ):
        self.token_mixer = token_mixer
        self.remat_token_mixer = remat_token_mixer
        self.norm = layers.layer_norm(dim, dtype=dtype, rngs=rngs)
        self.channel_mlp = layers.ChannelMLP(dim, channels_mlp_dim, dtype=dtype, rngs=rngs)
        self.drop_path = layers.drop_path(drop_path_rate)

    def __call__(self, x: Array, *, rngs: nnx.Rngs | None = None) -> Array:
        """``x: [B, S, D] -> [B, S, D]``.

        ``rngs`` (stream ``'dropout'``) is needed only in training mode with a drop-path rate > 0.
        """
        if self.remat_token_mixer:
            y = nnx.remat(_mix_tokens, policy=_SAVE_NOTHING)(self.token_mixer, x)
        else:
            y = self.token_mixer(x)
        x = x + self.drop_path(y, rngs=rngs)
        return x + self.drop_path(self.channel_mlp(self.norm(x)), rngs=rngs)


class Mixer(nnx.Module):
    """Mixer classifier ``images [B, img_size, img_size, 3] -> logits [B, num_classes]``.

    Submodules: ``stem`` (Conv kernel ``[P, P, 3, D]``, bias ``[D]``), ``blocks`` (``num_blocks``
    ``MixerBlock``; with ``scan_blocks`` one ``MixerBlock`` whose variables have a leading
    ``[num_blocks]`` axis), ``norm`` (final LayerNorm over D), ``head`` (kernel
    ``[D, num_classes]``, bias ``[num_classes]``, zero init). The iMixer arguments
    (``hidden_ratio`` ... ``tol``) are used only by ``token_mixer='imlp'`` but are validated for
    both mixers. ``scan_blocks`` and ``remat`` choose the layout and rematerialisation (above).

    Like every NNX module with dropout, a new Mixer is in training mode (drop path active, power
    iteration running): call ``model.eval()`` for inference, or pass ``rngs`` when training.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        img_size: int = 224,
        patch_size: int = 16,
        num_blocks: int,
        hidden_dim: int,
        tokens_mlp_dim: int,
        channels_mlp_dim: int,
        token_mixer: str = "mlp",
        hidden_ratio: float = 2.0,
        n_iter: int = 2,
        n_power: int = 8,
        sn_coeff: float = 0.9,
        spectral_norm: bool = True,
        tied: bool = False,
        adjoint: str = "unrolled",
        tol: float = 0.0,
        activation: str = "gelu",
        update: str = "residual",
        step_size: float = 1.0,
        drop_path_rate: float = 0.0,
        scan_blocks: bool = False,
        remat: str = "none",
        dtype=None,
        rngs: nnx.Rngs,
    ):
        _validate(
            num_classes=num_classes,
            img_size=img_size,
            patch_size=patch_size,
            num_blocks=num_blocks,
            hidden_dim=hidden_dim,
            tokens_mlp_dim=tokens_mlp_dim,
            channels_mlp_dim=channels_mlp_dim,
            token_mixer=token_mixer,
            hidden_ratio=hidden_ratio,
            n_iter=n_iter,
            n_power=n_power,
            sn_coeff=sn_coeff,
            adjoint=adjoint,
            tol=tol,
            activation=activation,
            update=update,
            step_size=step_size,
            drop_path_rate=drop_path_rate,
            scan_blocks=scan_blocks,
            remat=remat,
        )
        dtype = layers.compute_dtype(dtype)
        self.img_size = img_size
        self.patch_size = patch_size
        self.num_tokens = (img_size // patch_size) ** 2
        self.dtype = dtype
        self.num_blocks = num_blocks
        self.scan_blocks = scan_blocks
        self.remat_blocks = remat == "block"
        self.stem = layers.patch_stem(patch_size, hidden_dim, dtype=dtype, rngs=rngs)

        def make_token_mixer(rngs: nnx.Rngs):
            common = dict(
                activation=activation,
                tied=tied,
                update=update,
                step_size=step_size,
                dtype=dtype,
                rngs=rngs,
            )
            if token_mixer == "mlp":
                return TokenMLP(self.num_tokens, hidden_dim, tokens_mlp_dim, **common)
            return IMLP(
                self.num_tokens,
                hidden_dim,
                tokens_mlp_dim,
                hidden_ratio=hidden_ratio,
                n_iter=n_iter,
                n_power=n_power,
                sn_coeff=sn_coeff,
                spectral_norm=spectral_norm,
                adjoint=adjoint,
                tol=tol,
                **common,
            )

        def make_block(rngs: nnx.Rngs) -> MixerBlock:
            return MixerBlock(
                make_token_mixer(rngs),
                hidden_dim,
                channels_mlp_dim,
                drop_path_rate=drop_path_rate,
                remat_token_mixer=remat == "token_mixer",
                dtype=dtype,
                rngs=rngs,
            )

        if scan_blocks:
            make_stacked = nnx.split_rngs(splits=num_blocks)(nnx.vmap(make_block, in_axes=0))
            self.blocks = make_stacked(rngs)
        else:
            self.blocks = nnx.List(make_block(rngs) for _ in range(num_blocks))
        self.norm = layers.layer_norm(hidden_dim, dtype=dtype, rngs=rngs)
        self.head = layers.head_linear(hidden_dim, num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, images: Array, *, rngs: nnx.Rngs | None = None) -> Array:
        """``images: [B, img_size, img_size, 3]`` (normalised to [-1, 1]) -> float32 logits
        ``[B, num_classes]``.

        ``rngs`` (stream ``'dropout'``) drives drop path in training mode (``model.train()``).
        The token mixers' intermediates: ``capture_intermediates(model, images)``.
        """
        x = self.embed(images)
        apply = nnx.remat(_apply_block, policy=_SAVE_NOTHING) if self.remat_blocks else _apply_block
        if self.scan_blocks:
            x = self._scan(apply, x, rngs)
        else:
            for block in self.blocks:
                x = apply(block, x, rngs)
        x = self.norm(x).mean(axis=1)  # [B, D]
        return self.head(x).astype(jnp.float32)

    def _scan(self, apply, x: Array, rngs: nnx.Rngs | None) -> Array:
        """The stacked blocks on ``x [B, S, D]`` under ``nnx.scan``; block i draws its drop-path
        masks from the i-th of ``num_blocks`` keys split off ``rngs.dropout()``."""
        keys = None if rngs is None else jax.random.split(rngs.dropout(), self.num_blocks)

        @nnx.scan(in_axes=(nnx.Carry, 0, 0), out_axes=nnx.Carry)
        def body(x, block, key):
            return apply(block, x, None if key is None else nnx.Rngs(dropout=key))

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
        x = self.stem(images)  # [B, H/P, W/P, D]
        return x.reshape(x.shape[0], self.num_tokens, x.shape[-1])


_SAVE_NOTHING = jax.checkpoint_policies.nothing_saveable


def _mix_tokens(token_mixer: nnx.Module, x: Array) -> Array:
    return token_mixer(x)


def _apply_block(block: MixerBlock, x: Array, rngs: nnx.Rngs | None) -> Array:
    return block(x, rngs=rngs)


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
    if any(isinstance(m, Mixer) and m.scan_blocks for _, m in nnx.iter_modules(module)):
        raise ValueError(
            "capture_intermediates needs the per-block layout: build the model with "
            "scan_blocks=False and copy the variables over with copy_variables"
        )
    view = nnx.view(module, sow_intermediates=True)
    return nnx.capture(view, nnx.Intermediate)(*args, **kwargs)


def _validate(**args) -> None:
    """One-line ValueError naming the first invalid constructor argument. The iMixer arguments
    are checked by ``token_mixers.check_arguments`` for both token mixers."""
    layers.check_sizes(**{name: args[name] for name in layers.BACKBONE_SIZES})
    if args["token_mixer"] not in TOKEN_MIXERS:
        raise ValueError(
            f"token_mixer must be one of {', '.join(TOKEN_MIXERS)}; got {args['token_mixer']!r}"
        )
    if args["remat"] not in REMATS:
        raise ValueError(f"remat must be one of {', '.join(REMATS)}; got {args['remat']!r}")
    if not isinstance(args["scan_blocks"], bool):
        raise ValueError(f"scan_blocks must be True or False, got {args['scan_blocks']!r}")
    if not 0 <= args["drop_path_rate"] < 1:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {args['drop_path_rate']!r}")
    names = ("hidden_ratio", "n_iter", "n_power", "sn_coeff", "adjoint", "tol", "activation")
    check_arguments(
        token_dim=args["tokens_mlp_dim"],
        **{name: args[name] for name in (*names, "update", "step_size")},
    )
