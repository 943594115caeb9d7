"""Lagrangians of Hopfield neurons: a scalar L(x) and its closed-form gradient g(x) = dL/dx.

Every class is a frozen pytree (``flax.struct.dataclass``): parameters such as the LayerNorm gain
are leaves, so they can be learned and differentiated; configuration (axis, eps) is static.

``L(x)`` sums over *all* elements of ``x`` (any leading batch axes included); callers that need a
per-sample energy map over the batch. ``activation(x)`` has the shape of ``x`` and equals
``jax.grad(L)(x)`` (checked by the tests), but is written in closed form so the forward pass of a
network never differentiates.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array


@struct.dataclass
class Identity:
    """L = 0.5 sum x^2, g = x."""

    convex = True

    def __call__(self, x: Array) -> Array:
        return 0.5 * jnp.sum(x * x)

    def activation(self, x: Array) -> Array:
        return x


@struct.dataclass
class ReLU:
    """L = 0.5 sum relu(x)^2, g = relu(x)."""

    convex = True

    def __call__(self, x: Array) -> Array:
        r = jax.nn.relu(x)
        return 0.5 * jnp.sum(r * r)

    def activation(self, x: Array) -> Array:
        return jax.nn.relu(x)


@struct.dataclass
class Softplus:
    """L = sum log(1 + e^x), g = sigmoid(x)."""

    convex = True

    def __call__(self, x: Array) -> Array:
        return jnp.sum(jax.nn.softplus(x))

    def activation(self, x: Array) -> Array:
        return jax.nn.sigmoid(x)


@struct.dataclass
class Softmax:
    """L = (1/beta) logsumexp(beta x) along ``axis`` (summed over the others), g = softmax."""

    beta: float | Array = 1.0
    axis: int = struct.field(pytree_node=False, default=-1)
    convex = True

    def __call__(self, x: Array) -> Array:
        return jnp.sum(jax.nn.logsumexp(self.beta * x, axis=self.axis)) / self.beta

    def activation(self, x: Array) -> Array:
        return jax.nn.softmax(self.beta * x, axis=self.axis)


@struct.dataclass
class LayerNorm:
    """L = n gamma sqrt(Var(x) + eps) + sum delta x along ``axis``, g = LayerNorm(x).

    ``gamma`` must be a scalar (>= 0) for L to exist; ``delta`` broadcasts against ``x`` (e.g. a
    per-channel bias of shape ``[D, 1]`` for a ``[..., D, S]`` token-matrix layer). The activation
    also accepts a per-channel ``gamma`` (the official Mixer's LayerNorm), but then no scalar L has
    it as gradient and calling L raises.
    """

    gamma: float | Array = 1.0
    delta: float | Array = 0.0
    eps: float = struct.field(pytree_node=False, default=1e-6)
    axis: int = struct.field(pytree_node=False, default=-1)
    convex = True

    def _centred(self, x: Array) -> tuple[Array, Array]:
        xc = x - jnp.mean(x, axis=self.axis, keepdims=True)
        var = jnp.mean(xc * xc, axis=self.axis, keepdims=True)
        return xc, var

    def __call__(self, x: Array) -> Array:
        if jnp.size(self.gamma) != 1:
            raise ValueError(
                "LayerNorm Lagrangian exists only for a scalar gain; build the layer with "
                "scalar_scale=True (tied/energy-faithful mode) to evaluate its energy."
            )
        _, var = self._centred(x)
        n = x.shape[self.axis]
        return n * jnp.sum(self.gamma * jnp.sqrt(var + self.eps)) + jnp.sum(self.delta * x)

    def activation(self, x: Array) -> Array:
        xc, var = self._centred(x)
        return self.gamma * xc * jax.lax.rsqrt(var + self.eps) + self.delta


@struct.dataclass
class GELU:
    """L = sum Phi(x) with Phi' = GELU (exact erf form). Not convex: GELU' < 0 for x < -0.7518."""

    convex = False

    def __call__(self, x: Array) -> Array:
        erf = jax.scipy.special.erf(x / math.sqrt(2.0))
        gauss = math.sqrt(2.0 / math.pi) * jnp.exp(-0.5 * x * x)
        return 0.25 * jnp.sum(x * x + (x * x - 1.0) * erf + x * gauss)

    def activation(self, x: Array) -> Array:
        return jax.nn.gelu(x, approximate=False)


Lagrangian = Identity | ReLU | Softplus | Softmax | LayerNorm | GELU

_BY_NAME = {
    "identity": Identity,
    "relu": ReLU,
    "softplus": Softplus,
    "softmax": Softmax,
    "layernorm": LayerNorm,
    "gelu": GELU,
}
NAMES = tuple(_BY_NAME)


def get(name: str, **kwargs) -> Lagrangian:
    """Builds a Lagrangian by name (one of ``NAMES``), e.g. ``get('softmax', beta=2.0)``."""
    if name not in _BY_NAME:
        raise ValueError(f"unknown Lagrangian {name!r}; choose one of {', '.join(NAMES)}")
    return _BY_NAME[name](**kwargs)
