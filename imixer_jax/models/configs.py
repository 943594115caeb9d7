"""Typed, frozen model configs: the arguments of ``Mixer`` and ``ParaMixer``, validated once.

``ModelConfig`` holds the backbone fields both architectures share (patch stem, block stack,
final LayerNorm, head; docs/design.md#model-config); ``MixerConfig`` adds the token mixer's
(MLP-Mixer, iMixer) and ``ParaMixerConfig`` the parallelized Mixer family's. Every field is checked
in ``__post_init__``: an invalid value raises ``ModelConfigError``, a ``ValueError`` with one line
that names the field (``.field``) and what it must be. An unknown field name raises it too, with
the closest field as a suggestion (``n_iters`` -> "did you mean n_iter"). Configs are hashable and
immutable: override fields with ``config.replace(n_iter=4)`` (``dataclasses.replace``).

``dtype`` (the computation dtype; parameters are float32) is given as ``None`` (float32), a name
(``'bfloat16'``) or a dtype (``jnp.bfloat16``) and stored as its name, so that ``to_dict()`` is
plain JSON; ``compute_dtype`` is the ``jnp.dtype`` the layers get.

The registry (``registry.model_config(name)``) holds the named variants; the trainer keeps the
fields as ``config.model`` (a ``ConfigDict``, so ``--config.model.n_iter=4`` works) and converts
them with ``from_dict`` where it validates the config and where it builds the model.
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
from collections.abc import Mapping
from typing import Any, ClassVar

import jax.numpy as jnp

from imixer_jax.models import token_mixers

TOKEN_MIXERS = ("mlp", "imlp")
REMATS = ("none", "activations", "token_mixer", "block")
BLOCKS = ("serial", "parallel")
MLPS = ("vanilla", "symmetric", "asymmetric")


class ModelConfigError(ValueError):
    """An invalid model config field; the message is one line, ``field`` names the field."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Backbone fields shared by every architecture: images ``[B, img_size, img_size, 3]`` ->
    S = (img_size / patch_size)^2 tokens of width ``hidden_dim`` -> ``num_blocks`` blocks ->
    logits ``[B, num_classes]``. ``activation`` is the blocks' hidden nonlinearity (the gradient
    of their hidden layers' Lagrangian); ``update_rule`` is ``'residual'`` (X + f) or ``'euler'``
    (X + step_size (f - X)). ``approximate_gelu`` makes every GELU the tanh approximation of
    flax's ``nn.gelu`` default, as Google's vit_jax Mixer (its weights then give its logits
    exactly); the default is the exact erf GELU of the official iMixer and paramixer code.
    """

    arch: ClassVar[str]  # the key of the model class in ``registry.ARCHITECTURES``
    choices: ClassVar[dict[str, tuple[str, ...]]] = {
        "activation": token_mixers.ACTIVATIONS,
        "update_rule": token_mixers.UPDATE_RULES,
    }

    num_classes: int
    img_size: int = 224
    patch_size: int = 16
    num_blocks: int
    hidden_dim: int
    activation: str = "gelu"
    update_rule: str = "residual"
    step_size: float = 1.0
    approximate_gelu: bool = False
    drop_path_rate: float = 0.0
    dtype: str | None = None

    def __new__(cls, **fields: Any):
        # Unknown names fail here, with a suggestion, before dataclass's __init__ gives a bare
        # TypeError; dataclasses.replace comes through here too.
        for name in fields:
            _check_name(cls, name)
        return super().__new__(cls)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            self._check_type(field.name, field.type, getattr(self, field.name))
        for name, allowed in self.choices.items():
            value = getattr(self, name)
            if value not in allowed:
                _fail(name, f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        if self.img_size % self.patch_size:
            _fail(
                "img_size",
                f"img_size ({self.img_size}) must be divisible by patch_size ({self.patch_size})",
            )
        if not self.step_size > 0:
            _fail("step_size", f"step_size must be > 0, got {self.step_size!r}")
        if not 0 <= self.drop_path_rate < 1:
            rate = self.drop_path_rate
            _fail("drop_path_rate", f"drop_path_rate must be in [0, 1), got {rate!r}")
        object.__setattr__(self, "dtype", _dtype_name(self.dtype))

    def _check_type(self, name: str, kind: str, value: Any) -> None:
        """Positive ints, real floats (stored as float), bools and strings, by annotation."""
        if kind == "int" and (
            isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1
        ):
            _fail(name, f"{name} must be a positive integer, got {value!r}")
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                _fail(name, f"{name} must be a number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if kind == "bool" and not isinstance(value, bool):
            _fail(name, f"{name} must be True or False, got {value!r}")
        if kind == "str" and not isinstance(value, str):
            _fail(name, f"{name} must be a string, got {value!r}")

    @property
    def num_tokens(self) -> int:
        """S, the number of patches (tokens) per image."""
        return (self.img_size // self.patch_size) ** 2

    @property
    def compute_dtype(self) -> jnp.dtype | None:
        """The layers' computation dtype (None: float32, as the parameters)."""
        return None if self.dtype is None else jnp.dtype(self.dtype)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with ``changes`` applied and validated (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain (JSON-serialisable) dict, in declaration order."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> ModelConfig:
        """The config with ``fields``; a missing field without a default is a one-line error."""
        for name in fields:
            _check_name(cls, name)
        for field in dataclasses.fields(cls):
            if field.default is dataclasses.MISSING and field.name not in fields:
                _fail(field.name, f"{field.name} is missing ({cls.__name__} has no default)")
        return cls(**fields)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MixerFamilyConfig(ModelConfig):
    """The Mixers' MLP widths: ``tokens_mlp_dim`` (T) and ``channels_mlp_dim`` (C), the hidden
    widths of the token and channel MLPs."""

    tokens_mlp_dim: int
    channels_mlp_dim: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class MixerConfig(MixerFamilyConfig):
    """``Mixer``: MLP-Mixer (``token_mixer='mlp'``) or iMixer (``'imlp'``).

    The iMLP fields (docs/theory.md#imlp): ``hidden_ratio`` (iMLP hidden width H / T),
    ``n_iter`` fixed-point steps (0: the plain token MLP), ``n_power`` power iterations,
    ``sn_coeff`` the spectral-norm bound, ``spectral_norm``, ``tied`` (feedback reuses the
    transposed kernels: the pure Hopfield model), ``adjoint`` (``'unrolled'`` | ``'implicit'``)
    and ``tol`` (early stop; 0: exactly n_iter steps). They are validated for both mixers.
    ``scan_blocks`` stacks the blocks under ``nnx.scan``; ``remat`` is ``'none'``,
    ``'activations'``, ``'token_mixer'`` or ``'block'`` (docs/design.md#model-config).
    """

    arch: ClassVar[str] = "mixer"
    choices: ClassVar[dict[str, tuple[str, ...]]] = {
        **ModelConfig.choices,
        "token_mixer": TOKEN_MIXERS,
        "remat": REMATS,
    }

    token_mixer: str = "mlp"
    hidden_ratio: float = 2.0
    n_iter: int = 2
    n_power: int = 8
    sn_coeff: float = 0.9
    spectral_norm: bool = True
    tied: bool = False
    adjoint: str = "unrolled"
    tol: float = 0.0
    scan_blocks: bool = False
    remat: str = "none"

    def _check_type(self, name: str, kind: str, value: Any) -> None:
        if name != "n_iter":  # n_iter = 0 is allowed: checked with the token mixer's fields
            super()._check_type(name, kind, value)

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            token_mixers.check_arguments(
                token_dim=self.tokens_mlp_dim,
                **{name: getattr(self, name) for name in _TOKEN_MIXER_FIELDS},
            )
        except ValueError as e:
            _fail(str(e).split()[0], str(e))
        if self.tied and self.approximate_gelu:
            _fail(
                "approximate_gelu",
                "approximate_gelu: the tanh GELU has no closed-form Lagrangian, so a tied model "
                "has no energy with it; set approximate_gelu=False or tied=False",
            )


_TOKEN_MIXER_FIELDS = (
    "hidden_ratio",
    "n_iter",
    "n_power",
    "sn_coeff",
    "adjoint",
    "tol",
    "activation",
    "update_rule",
    "step_size",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ParaMixerConfig(MixerFamilyConfig):
    """``ParaMixer``: the parallelized MLP-Mixer family (docs/theory.md#parallel-mixer).

    ``block``: ``'serial'`` or ``'parallel'``; ``mlp``: ``'vanilla'``, ``'symmetric'`` (tied
    W^T g(W x)) or ``'asymmetric'`` (plus W_2 g(W x)); each block is applied ``repeats`` (>= 1)
    times with the same weights (the official ``_ni`` variants); ``asym_penalty`` is lambda of
    the L2 penalty on W_2 (asymmetric only);
    ``scalar_scale`` makes the LayerNorm gain a scalar (needed for the energy to exist).
    """

    arch: ClassVar[str] = "paramixer"
    choices: ClassVar[dict[str, tuple[str, ...]]] = {
        **ModelConfig.choices,
        "block": BLOCKS,
        "mlp": MLPS,
    }

    block: str = "parallel"
    mlp: str = "vanilla"
    repeats: int = 1
    asym_penalty: float = 0.0
    scalar_scale: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.asym_penalty >= 0:
            _fail("asym_penalty", f"asym_penalty must be >= 0, got {self.asym_penalty!r}")
        if self.asym_penalty and self.mlp != "asymmetric":
            _fail(
                "asym_penalty",
                "asym_penalty penalises the symmetry-breaking W_2 of mlp='asymmetric'; "
                f"got mlp={self.mlp!r} (set asym_penalty=0)",
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class EnergyTransformerConfig(ModelConfig):
    """``EnergyTransformer``: blocks of attention and a Hopfield memory on one LayerNorm layer of
    tokens (docs/theory.md#attention-energies).

    ``num_heads`` (H) heads with keys and queries of ``head_dim`` (Y) neurons, beta = 1 / sqrt(Y);
    ``num_memories`` (K) memory neurons per token, with Lagrangian gradient ``activation``
    (``'relu'``, the Energy Transformer's); ``self_mask`` leaves each token out of its own keys;
    ``n_iter`` descent steps per block with the same weights, each X + step_size I
    (``update_rule='residual'``, the Energy Transformer's) or X + step_size (I - X) (``'euler'``).
    The blocks compute in float32 whatever ``dtype`` (the stem's and head's) is.
    """

    arch: ClassVar[str] = "energy_transformer"

    num_heads: int
    head_dim: int
    num_memories: int
    activation: str = "relu"
    step_size: float = 0.1
    n_iter: int = 1
    self_mask: bool = False


CONFIGS: dict[str, type[ModelConfig]] = {
    c.arch: c for c in (MixerConfig, ParaMixerConfig, EnergyTransformerConfig)
}


def from_dict(arch: str, fields: Mapping[str, Any]) -> ModelConfig:
    """The typed config of architecture ``arch`` (a key of ``CONFIGS``) with ``fields``."""
    if arch not in CONFIGS:
        _fail("arch", f"arch must be one of {', '.join(CONFIGS)}; got {arch!r}")
    return CONFIGS[arch].from_dict(fields)


def _check_name(cls: type[ModelConfig], name: str) -> None:
    names = [field.name for field in dataclasses.fields(cls)]
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean {close[0]}?" if close else f"fields: {', '.join(names)}"
        _fail(name, f"{name} is not a {cls.__name__} field; {hint}")


def _fail(field: str, message: str) -> None:
    raise ModelConfigError(field, message)


def _dtype_name(dtype: Any) -> str | None:
    if dtype is None:
        return None
    try:
        dtype = jnp.dtype(dtype)
    except TypeError as e:
        raise ModelConfigError(
            "dtype", f"dtype must be None or a floating dtype name, got {dtype!r}"
        ) from e
    if not jnp.issubdtype(dtype, jnp.floating):
        _fail("dtype", f"dtype must be a floating dtype (e.g. 'bfloat16'), got {dtype}")
    return dtype.name
