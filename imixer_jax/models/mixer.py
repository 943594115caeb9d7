"""MLP-Mixer / iMixer backbone (SPEC sections 3-4, official architecture).

    images [B, H, W, 3] -> Conv PxP stride P (3 -> D) -> X [B, S, D],  S = (H/P) * (W/P)
    N x MixerBlock:  X <- X + DropPath(token_mixer(X))            (the token mixer owns LN_1)
                     X <- X + DropPath(fc_c2(GELU(fc_c1(LN_2 X))))
    LayerNorm -> mean over tokens [B, D] -> head (zero init) -> logits [B, num_classes]

``token_mixer='mlp'`` is MLP-Mixer (``TokenMLP``), ``'imlp'`` is iMixer (``IMLP``). Drop path has
the same rate in every block (official iMixer). Parameters are float32; ``dtype`` (``None`` =
float32, or e.g. ``'bfloat16'``) is the computation dtype; logits are always float32.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
from flax import nnx

from imixer_jax.models import layers
from imixer_jax.models.token_mixers import IMLP, TokenMLP, check_arguments

Array = jax.Array

TOKEN_MIXERS = ("mlp", "imlp")


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
        dtype=None,
        rngs: nnx.Rngs,
    ):
        self.token_mixer = token_mixer
        self.norm = layers.layer_norm(dim, dtype=dtype, rngs=rngs)
        self.channel_mlp = layers.ChannelMLP(dim, channels_mlp_dim, dtype=dtype, rngs=rngs)
        self.drop_path = layers.drop_path(drop_path_rate)

    def __call__(
        self, x: Array, *, rngs: nnx.Rngs | None = None, inspect: bool = False
    ) -> Array | tuple[Array, dict]:
        """``x: [B, S, D] -> [B, S, D]`` (and the token mixer's inspection dict when ``inspect``).

        ``rngs`` (stream ``'dropout'``) is needed only in training mode with a drop-path rate > 0.
        """
        info = None
        if inspect:
            y, info = self.token_mixer(x, inspect=True)
        else:
            y = self.token_mixer(x)
        x = x + self.drop_path(y, rngs=rngs)
        x = x + self.drop_path(self.channel_mlp(self.norm(x)), rngs=rngs)
        return (x, info) if inspect else x


class Mixer(nnx.Module):
    """Mixer classifier ``images [B, img_size, img_size, 3] -> logits [B, num_classes]``.

    Submodules: ``stem`` (Conv kernel ``[P, P, 3, D]``, bias ``[D]``), ``blocks`` (``num_blocks``
    ``MixerBlock``), ``norm`` (final LayerNorm over D), ``head`` (kernel ``[D, num_classes]``,
    bias ``[num_classes]``, zero init). The iMixer arguments (``hidden_ratio`` ... ``tol``) are
    used only by ``token_mixer='imlp'`` but are validated for both mixers.

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
        )
        dtype = _compute_dtype(dtype)
        self.img_size = img_size
        self.patch_size = patch_size
        self.num_tokens = (img_size // patch_size) ** 2
        self.dtype = dtype
        self.stem = layers.patch_stem(patch_size, hidden_dim, dtype=dtype, rngs=rngs)

        def make_token_mixer():
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

        self.blocks = nnx.List(
            MixerBlock(
                make_token_mixer(),
                hidden_dim,
                channels_mlp_dim,
                drop_path_rate=drop_path_rate,
                dtype=dtype,
                rngs=rngs,
            )
            for _ in range(num_blocks)
        )
        self.norm = layers.layer_norm(hidden_dim, dtype=dtype, rngs=rngs)
        self.head = layers.head_linear(hidden_dim, num_classes, dtype=dtype, rngs=rngs)

    def __call__(
        self, images: Array, *, rngs: nnx.Rngs | None = None, inspect: bool = False
    ) -> Array | tuple[Array, dict]:
        """``images: [B, img_size, img_size, 3]`` (normalised to [-1, 1]) -> float32 logits
        ``[B, num_classes]``; with ``inspect``, also ``{'block_i': token-mixer info dict}``.

        ``rngs`` (stream ``'dropout'``) drives drop path in training mode (``model.train()``).
        """
        x = self.embed(images)
        intermediates = {}
        for i, block in enumerate(self.blocks):
            if inspect:
                x, intermediates[f"block_{i}"] = block(x, rngs=rngs, inspect=True)
            else:
                x = block(x, rngs=rngs)
        x = self.norm(x).mean(axis=1)  # [B, D]
        logits = self.head(x).astype(jnp.float32)
        return (logits, intermediates) if inspect else logits

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


def _compute_dtype(dtype) -> jnp.dtype | None:
    if dtype is None:
        return None
    try:
        dtype = jnp.dtype(dtype)
    except TypeError as e:
        raise ValueError(f"dtype must be None or a floating dtype name, got {dtype!r}") from e
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    return dtype


def _validate(**args) -> None:
    """One-line ValueError naming the first invalid constructor argument. The iMixer arguments
    are checked by ``token_mixers.check_arguments`` for both token mixers."""
    positive_ints = (
        "num_classes",
        "img_size",
        "patch_size",
        "num_blocks",
        "hidden_dim",
        "tokens_mlp_dim",
        "channels_mlp_dim",
    )
    for name in positive_ints:
        if not isinstance(args[name], numbers.Integral) or args[name] < 1:
            raise ValueError(f"{name} must be a positive integer, got {args[name]!r}")
    if args["img_size"] % args["patch_size"]:
        raise ValueError(
            f"img_size ({args['img_size']}) must be divisible by patch_size ({args['patch_size']})"
        )
    if args["token_mixer"] not in TOKEN_MIXERS:
        raise ValueError(
            f"token_mixer must be one of {', '.join(TOKEN_MIXERS)}; got {args['token_mixer']!r}"
        )
    if not 0 <= args["drop_path_rate"] < 1:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {args['drop_path_rate']!r}")
    names = ("hidden_ratio", "n_iter", "n_power", "sn_coeff", "adjoint", "tol", "activation")
    check_arguments(
        token_dim=args["tokens_mlp_dim"],
        **{name: args[name] for name in (*names, "update", "step_size")},
    )
