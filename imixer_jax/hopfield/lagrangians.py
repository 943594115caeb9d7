"""Lagrangians of Hopfield neurons: a scalar L(x) and its gradient g(x) = dL/dx (the activation).

The public protocol is ``Lagrangian``: ``L(x)`` (a scalar summed over *all* elements of ``x``,
any leading batch axes included), ``activation(x)`` (shaped like ``x``, equal to
``jax.grad(L)(x)``), ``neuron_energy(x)`` (the neuron term <x, g(x)> - L(x) of the energy, also a
sum over all elements) and the class attribute ``convex``. ``from_fn(L)`` turns any scalar function
into a Lagrangian (activation by ``jax.grad``); the built-in ones write the activation in closed
form so that the forward pass of a network never differentiates, and LayerNorm writes its neuron
energy in closed form (the difference <x, g> - L cancels catastrophically in float32).

Every class is a frozen pytree (``hopfield.dataclass``): parameters such as the LayerNorm gain
are leaves, so they can be learned and differentiated; configuration (axis, eps) is static.
Normalising Lagrangians (``LayerNorm``, ``Softmax``, ``Spherical``) act along ``axis``: an int or a
tuple of ints; ``None`` means every axis of the layer state, resolved to the trailing axes by the
network that owns the layer (a LayerNorm over a whole S x D matrix is ``axis=None`` or
``axis=(-2, -1)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from flax import struct

from imixer_jax.hopfield import pytree
from imixer_jax.hopfield.synapses import promote_rank

Array = jax.Array
Axis = int | tuple[int, ...] | None


@runtime_checkable
class Lagrangian(Protocol):
    """What a network needs of a layer's Lagrangian."""

    convex: bool

    def __call__(self, x: Array) -> Array:
        """L(x) summed over all elements of ``x``: a scalar."""

    def activation(self, x: Array) -> Array:
        """g(x) = dL/dx, shaped like ``x``."""

    def neuron_energy(self, x: Array) -> Array:
        """<x, g(x)> - L(x) summed over all elements of ``x``: a scalar."""


class _Generic:
    """Neuron energy from L and g (exact enough unless L and <x, g> nearly cancel)."""

    def neuron_energy(self, x: Array) -> Array:
        return jnp.vdot(x, self.activation(x)) - self(x)


@pytree.dataclass
class FromFn(_Generic):
    """A Lagrangian given by a scalar function ``fn`` of one element; activation by ``jax.grad``.

    ``fn`` maps an array to an array of the same shape (elementwise L) or to a scalar (a joint L
    of the whole state); ``convex`` is what the caller asserts (descent is guaranteed only then).
    """

    fn: Callable[[Array], Array] = struct.field(pytree_node=False)
    convex: bool = struct.field(pytree_node=False, default=False)

    def __call__(self, x: Array) -> Array:
        return jnp.sum(self.fn(x))

    def activation(self, x: Array) -> Array:
        return jax.grad(self)(x)


def from_fn(fn: Callable[[Array], Array], *, convex: bool = False) -> FromFn:
    """Lagrangian ``L(x) = sum(fn(x))`` with activation ``jax.grad(L)``, e.g.
    ``from_fn(lambda x: jnp.logaddexp(0, x), convex=True)`` (softplus)."""
    return FromFn(fn, convex)


@pytree.dataclass
class Identity(_Generic):
    """L = 0.5 sum x^2, g = x."""

    convex = True

    def __call__(self, x: Array) -> Array:
        return 0.5 * jnp.sum(x * x)

    def activation(self, x: Array) -> Array:
        return x


@pytree.dataclass
class ReLU(_Generic):
    """L = 0.5 sum relu(x)^2, g = relu(x)."""

    convex = True

    def __call__(self, x: Array) -> Array:
        r = jax.nn.relu(x)
        return 0.5 * jnp.sum(r * r)

    def activation(self, x: Array) -> Array:
        return jax.nn.relu(x)


@pytree.dataclass
class ReLUPower(_Generic):
    """L = sum relu(x)^n / n, g = relu(x)^(n-1) (n >= 2; n = 2 is ``ReLU``), the rectified
    polynomial of dense associative memories. Convex."""

    power: float = struct.field(pytree_node=False, default=3.0)
    convex = True

    def __call__(self, x: Array) -> Array:
        return jnp.sum(jax.nn.relu(x) ** self.power) / self.power

    def activation(self, x: Array) -> Array:
        return jax.nn.relu(x) ** (self.power - 1.0)


@pytree.dataclass
class Softplus(_Generic):
    """L = sum log(1 + e^x), g = sigmoid(x)."""

    convex = True

    def __call__(self, x: Array) -> Array:
        return jnp.sum(jax.nn.softplus(x))

    def activation(self, x: Array) -> Array:
        return jax.nn.sigmoid(x)


Sigmoid = Softplus  # named by its activation


@pytree.dataclass
class Exp(_Generic):
    """L = sum exp(beta x) / beta, g = exp(beta x) (hamux's ``lagr_exp``): the exponential
    neurons of dense associative memories (Demircigil et al. 2017). Convex."""

    beta: float | Array = 1.0
    convex = True

    def __call__(self, x: Array) -> Array:
        return jnp.sum(jnp.exp(self.beta * x)) / self.beta

    def activation(self, x: Array) -> Array:
        return jnp.exp(self.beta * x)


@pytree.dataclass
class RectifiedExp(_Generic):
    """L = sum [exp(beta r) / beta - r] with r = relu(x), g = exp(beta relu(x)) - 1 (hamux's
    ``lagr_rexp``): zero for x <= 0, exponential above. Convex (g is non-decreasing)."""

    beta: float | Array = 1.0
    convex = True

    def __call__(self, x: Array) -> Array:
        r = jax.nn.relu(x)
        return jnp.sum(jnp.exp(self.beta * r) / self.beta - r)

    def activation(self, x: Array) -> Array:
        return jnp.expm1(self.beta * jax.nn.relu(x))


@pytree.dataclass
class Tanh(_Generic):
    """L = sum log cosh(x), g = tanh(x). Convex (g' = 1 - tanh^2 > 0)."""

    convex = True

    def __call__(self, x: Array) -> Array:
        a = jnp.abs(x)  # log cosh x = |x| + log(1 + e^{-2|x|}) - log 2, stable for large |x|
        return jnp.sum(a + jax.nn.softplus(-2.0 * a) - math.log(2.0))

    def activation(self, x: Array) -> Array:
        return jnp.tanh(x)


def _axes(axis: Axis, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    return (axis,) if isinstance(axis, int) else tuple(axis)


def _merge(a: Array | float, shape: tuple[int, ...], lo: int, hi: int) -> Array:
    """``a`` (broadcastable to ``shape``) with axes ``lo:hi`` of ``shape`` merged into one."""
    a = jnp.asarray(a)
    if a.ndim == 0:
        return a
    a = jnp.broadcast_to(a, shape[len(shape) - max(a.ndim, len(shape) - lo) :])
    lead = a.ndim - (len(shape) - lo)
    return a.reshape((*a.shape[:lead], -1, *shape[hi:]))


def _count(x: Array, axis: Axis) -> int:
    return math.prod(x.shape[a] for a in _axes(axis, x.ndim))


@pytree.dataclass
class Softmax(_Generic):
    """L = (1/beta) logsumexp(beta x) along ``axis`` (summed over the others), g = softmax."""

    beta: float | Array = 1.0
    axis: Axis = struct.field(pytree_node=False, default=-1)
    convex = True

    def __call__(self, x: Array) -> Array:
        return jnp.sum(jax.nn.logsumexp(self.beta * x, axis=self.axis)) / self.beta

    def activation(self, x: Array) -> Array:
        return jax.nn.softmax(self.beta * x, axis=self.axis)


@pytree.dataclass
class Spherical(_Generic):
    """L = sqrt(sum x^2 + eps) along ``axis``, g = x / ||x|| (projection on the unit sphere).
    Convex (a norm); its neuron energy <x, g> - L = -eps / sqrt(||x||^2 + eps) in closed form."""

    eps: float = struct.field(pytree_node=False, default=1e-6)
    axis: Axis = struct.field(pytree_node=False, default=-1)
    convex = True

    def _norm(self, x: Array) -> Array:
        return jnp.sqrt(jnp.sum(x * x, axis=self.axis, keepdims=True) + self.eps)

    def __call__(self, x: Array) -> Array:
        return jnp.sum(self._norm(x))

    def activation(self, x: Array) -> Array:
        return x / self._norm(x)

    def neuron_energy(self, x: Array) -> Array:
        return -self.eps * jnp.sum(1.0 / self._norm(x))


@pytree.dataclass
class LayerNorm:
    """L = n gamma sqrt(Var(x) + eps) + sum delta x along ``axis``, g = LayerNorm(x).

    ``axis`` is an int, a tuple of ints (n = the number of elements normalised together) or None
    (every axis of the layer state). ``gamma`` must be a scalar (>= 0) for L to exist; ``delta``
    broadcasts against ``x`` (e.g. a per-channel bias of shape ``[D, 1]`` for a ``[..., D, S]``
    token-matrix layer). The activation also accepts a per-channel ``gamma`` (the official Mixer's
    LayerNorm), but then no scalar L has it as gradient and calling L raises.

    Neuron energy in closed form: <x, g> - L = -n gamma eps / sqrt(Var + eps) per normalised
    group (the delta terms cancel exactly), instead of the difference of two large numbers.

    ``fast_variance`` computes the activation from the moments, Var = E[x^2] - E[x]^2 clipped at
    0, in one pass over x (flax's ``use_fast_variance``, the default of ``nnx.LayerNorm``):
    statistics in at least float32, gamma and delta lifted to the rank of x by a reshape, and
    (x - mean) * (rsqrt(Var + eps) * gamma) + delta, so the activation (and its derivatives) is
    that of ``nnx.LayerNorm`` bit for bit. The default is the centred, two-pass variance.
    """

    gamma: float | Array = 1.0
    delta: float | Array = 0.0
    eps: float = struct.field(pytree_node=False, default=1e-6)
    axis: Axis = struct.field(pytree_node=False, default=-1)
    fast_variance: bool = struct.field(pytree_node=False, default=False)
    convex = True

    def _centred(self, x: Array) -> tuple[Array, Array]:
        xc = x - jnp.mean(x, axis=self.axis, keepdims=True)
        var = jnp.mean(xc * xc, axis=self.axis, keepdims=True)
        return xc, var

    def _check_scalar_gain(self) -> None:
        if jnp.size(self.gamma) != 1:
            raise ValueError(
                f"the LayerNorm Lagrangian exists only for a scalar gamma, got shape "
                f"{jnp.shape(self.gamma)}; use a scalar gamma to evaluate the energy"
            )

    def __call__(self, x: Array) -> Array:
        self._check_scalar_gain()
        _, var = self._centred(x)
        n = _count(x, self.axis)
        return n * jnp.sum(self.gamma * jnp.sqrt(var + self.eps)) + jnp.sum(self.delta * x)

    def activation(self, x: Array) -> Array:
        if self.fast_variance:
            return self._fast_variance_activation(x)
        axes = sorted(a % x.ndim for a in _axes(self.axis, x.ndim))
        if len(axes) > 1 and axes == list(range(axes[0], axes[-1] + 1)):
            # A run of axes is normalised as one merged axis: one reduction, in the order (and
            # so with the float32 rounding) of a LayerNorm over the flattened axes.
            lo, hi = axes[0], axes[-1] + 1
            gamma, delta = (_merge(a, x.shape, lo, hi) for a in (self.gamma, self.delta))
            merged = self.replace(gamma=gamma, delta=delta, axis=lo)
            return merged.activation(_merge(x, x.shape, lo, hi)).reshape(x.shape)
        xc, var = self._centred(x)
        return self.gamma * xc * jax.lax.rsqrt(var + self.eps) + self.delta

    def _fast_variance_activation(self, x: Array) -> Array:
        axes = tuple(sorted(a % x.ndim for a in _axes(self.axis, x.ndim)))
        stats = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        square = jax.lax.square(stats)
        mean, mean_square = stats.mean(axes), square.mean(axes)
        var = jnp.maximum(0.0, mean_square - jax.lax.square(mean))
        stats_shape = tuple(1 if a in axes else n for a, n in enumerate(x.shape))
        mean, var = mean.reshape(stats_shape), var.reshape(stats_shape)
        centred = x - mean
        scaled = jax.lax.rsqrt(var + self.eps) * promote_rank(self.gamma, x.ndim)
        return centred * scaled + promote_rank(self.delta, x.ndim)

    def neuron_energy(self, x: Array) -> Array:
        self._check_scalar_gain()
        _, var = self._centred(x)
        n = _count(x, self.axis)
        return -n * self.eps * jnp.sum(self.gamma * jax.lax.rsqrt(var + self.eps))


def gelu(x: Array) -> Array:
    """Exact GELU ``x Phi(x)``, ``Phi(x) = (1 + erf(x / sqrt 2)) / 2``: PyTorch's ``nn.GELU``
    formula, as the official code computes it, in float32 at least (a bfloat16 ``x`` is widened
    for the elementwise arithmetic and the result rounded once, as PyTorch's autocast does).

    Written by hand rather than ``jax.nn.gelu(approximate=False)``, which goes through ``erfc``
    (an exp and a piecewise rational on XLA:CPU, held as two arrays) and differentiates it into
    a second exp. Here the slope ``Phi + x phi`` is a closed form, and under differentiation
    ``x`` is kept and the slope recomputed from it in the backward pass (``jax.checkpoint``), so
    each activation is one elementwise pass forward and one backward, and nothing but ``x`` is
    held for it. Against the exact value in float64, on ``|x| <= 10``: value within 1.1e-6,
    slope within 2.2e-7 (the erfc form: 3.8e-7 and 1.4e-7); the difference is ``1 + erf``
    cancelling where x is very negative, where GELU itself is near 0.
    """
    return _checkpointed_gelu(x)


@jax.custom_jvp
def _gelu(x: Array) -> Array:
    wide = _widen(x)
    return (wide * _normal_cdf(wide)).astype(x.dtype)


def _widen(x: Array) -> Array:
    """``x`` in float32 at least (float64 stays float64)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _normal_cdf(x: Array) -> Array:
    return 0.5 + 0.5 * jax.lax.erf(x * (1.0 / math.sqrt(2.0)))


@_gelu.defjvp
def _gelu_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    (x,), (dx,) = primals, tangents
    wide = _widen(x)
    cdf = _normal_cdf(wide)
    slope = cdf + wide * jnp.exp(-0.5 * wide * wide) * (1.0 / math.sqrt(2.0 * math.pi))
    return (wide * cdf).astype(x.dtype), (slope * dx.astype(wide.dtype)).astype(dx.dtype)


_checkpointed_gelu = jax.checkpoint(_gelu)


@pytree.dataclass
class GELU(_Generic):
    """L = sum Phi(x) with Phi' = GELU (exact erf form). Not convex: GELU' < 0 for x < -0.7518.

    ``approximate=True``: the activation is the tanh approximation of GELU (flax's ``nn.gelu``
    default, used by Google's Mixer). Its antiderivative has no closed form, so L (and so the
    energy of a network with such a layer) is refused with a one-line error.
    """

    approximate: bool = struct.field(pytree_node=False, default=False)
    convex = False

    def __call__(self, x: Array) -> Array:
        if self.approximate:
            raise ValueError(
                "the tanh GELU (approximate=True) has no closed-form Lagrangian; use the exact "
                "GELU (approximate=False) where an energy is needed"
            )
        erf = jax.scipy.special.erf(x / math.sqrt(2.0))
        gauss = math.sqrt(2.0 / math.pi) * jnp.exp(-0.5 * x * x)
        return 0.25 * jnp.sum(x * x + (x * x - 1.0) * erf + x * gauss)

    def activation(self, x: Array) -> Array:
        return jax.nn.gelu(x, approximate=True) if self.approximate else gelu(x)


def bind(lagrangian: Lagrangian, ndim: int) -> Lagrangian:
    """Resolves ``axis=None`` (all axes of a layer of rank ``ndim``) to the trailing ``ndim``
    axes, so that the Lagrangian also acts per sample on batched states."""
    if getattr(lagrangian, "axis", 0) is None:
        return lagrangian.replace(axis=tuple(range(-ndim, 0)))
    return lagrangian


_BY_NAME = {
    "identity": Identity,
    "relu": ReLU,
    "relu_power": ReLUPower,
    "softplus": Softplus,
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "exp": Exp,
    "rectified_exp": RectifiedExp,
    "softmax": Softmax,
    "spherical": Spherical,
    "layernorm": LayerNorm,
    "gelu": GELU,
}
NAMES = tuple(_BY_NAME)


def get(name: str, **kwargs) -> Lagrangian:
    """Builds a Lagrangian by name (one of ``NAMES``), e.g. ``get('softmax', beta=2.0)``."""
    if name not in _BY_NAME:
        raise ValueError(f"unknown Lagrangian {name!r}; choose one of {', '.join(NAMES)}")
    return _BY_NAME[name](**kwargs)
