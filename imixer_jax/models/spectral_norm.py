"""Soft spectral normalisation of a Linear layer (official iMixer / i-ResNet form).

    W_sn = W / max(1, sigma / coeff),   sigma = u^T W v,

with u, v the persistent power-iteration vectors: randomly initialised and normalised, updated
``n_power`` times on every training-mode *call* of the layer (the official code runs the power
iteration in a forward pre-hook, so with ``n_iter`` fixed-point steps the vectors advance
``n_iter * n_power`` steps per model forward and each step sees its own sigma), never updated in
evaluation, and carrying no gradient; sigma is differentiated through W.

Written by hand because ``nnx.SpectralNorm`` divides by sigma unconditionally (no soft ``coeff``)
and has no per-call schedule. Kernels use Flax's ``[in, out]`` layout, i.e. ``kernel = W^T``:
u has ``out`` entries and v has ``in`` entries, as in PyTorch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from imixer_jax.models import partitioning
from imixer_jax.models.layers import MLP_BIAS_INIT, MLP_KERNEL_INIT

Array = jax.Array
_EPS = 1e-12  # torch.nn.functional.normalize's default


class SpectralVectors(nnx.Variable):
    """Power-iteration vectors u, v: persistent state, neither parameters nor differentiated."""


def _normalize(x: Array) -> Array:
    return x / jnp.maximum(jnp.linalg.norm(x), _EPS)


def power_iteration(kernel: Array, u: Array, v: Array, n_power: int) -> tuple[Array, Array]:
    """``n_power`` steps of v <- normalize(W^T u), u <- normalize(W v) for W = kernel^T."""

    def step(_, uv):
        u, v = uv
        v = _normalize(kernel @ u)
        u = _normalize(v @ kernel)
        return u, v

    return jax.lax.fori_loop(0, n_power, step, (u, v))


class SpectralNormLinear(nnx.Module):
    """Linear layer ``y = x @ W_sn + b`` with soft spectral normalisation of its kernel.

    Attributes:
      kernel: Param ``[in, out]``; bias: Param ``[out]``; u: ``[out]``, v: ``[in]`` SpectralVectors
        (replicated); kernel and bias split on 'model' as ``parallel`` says ('column', 'row';
        ``partitioning.linear_metadata``).
      deterministic: False (training) runs the power iteration; toggled by ``train()``/``eval()``
        and by ``nnx.view(model, deterministic=...)`` (``set_view``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        coeff: float = 0.9,
        n_power: int = 8,
        kernel_init=MLP_KERNEL_INIT,
        bias_init=MLP_BIAS_INIT,
        deterministic: bool = False,
        parallel: str = "column",
        rngs: nnx.Rngs,
    ):
        if coeff <= 0:
            raise ValueError(f"sn_coeff must be > 0, got {coeff}")
        if n_power < 1:
            raise ValueError(f"n_power must be >= 1, got {n_power}")
        metadata = partitioning.linear_metadata(parallel)
        self.kernel = nnx.Param(
            kernel_init(rngs.params(), (in_features, out_features)), **metadata["kernel_metadata"]
        )
        self.bias = nnx.Param(
            bias_init(rngs.params(), (out_features,)), **metadata["bias_metadata"]
        )
        vector = partitioning.REPLICATED_VECTOR
        self.u = SpectralVectors(
            _normalize(jax.random.normal(rngs.params(), (out_features,))), **vector
        )
        self.v = SpectralVectors(
            _normalize(jax.random.normal(rngs.params(), (in_features,))), **vector
        )
        self.coeff = coeff
        self.n_power = n_power
        self.deterministic = deterministic

    def set_view(self, deterministic: bool | None = None) -> None:
        """Used by ``nnx.view``: ``deterministic=True`` stops the power iteration (u, v frozen)."""
        if deterministic is not None:
            self.deterministic = deterministic

    def sigma(self) -> Array:
        """Current spectral-norm estimate u^T W v (differentiable in the kernel): ``[]``, or
        ``[N]`` for a layer whose variables are stacked along a leading axis (``scan_blocks``)."""
        kernel, u, v = self.kernel[...], self.u[...], self.v[...]
        if kernel.ndim == 3:
            return jax.vmap(_sigma)(kernel, u, v)
        return _sigma(kernel, u, v)

    def normalized_kernels(self, num_calls: int) -> Array:
        """Kernels ``[num_calls, in, out]`` seen by ``num_calls`` successive calls of the layer.

        In training mode each call first advances u, v by ``n_power`` steps (official per-call
        schedule) and the final vectors are stored; in evaluation all calls share one kernel.
        """
        kernel = self.kernel[...]
        if self.deterministic:
            return jnp.broadcast_to(self.current_kernel(), (num_calls, *kernel.shape))

        frozen = jax.lax.stop_gradient(kernel)

        def call(uv, _):
            u, v = power_iteration(frozen, *uv, self.n_power)
            return (u, v), _sigma(kernel, u, v)

        (u, v), sigmas = jax.lax.scan(call, (self.u[...], self.v[...]), None, length=num_calls)
        self.u[...] = u
        self.v[...] = v
        return kernel[None] * jax.vmap(self._scale)(sigmas)[:, None, None]

    def current_kernel(self) -> Array:
        """``[in, out]`` kernel normalised with the stored u, v (no power-iteration step)."""
        return self.kernel[...] * self._scale(self.sigma())

    def normalized_kernel(self) -> Array:
        """``[in, out]`` kernel of a single call (advances u, v once in training mode)."""
        return self.normalized_kernels(1)[0]

    def _scale(self, sigma: Array) -> Array:
        return 1.0 / jnp.maximum(1.0, sigma / self.coeff)

    def __call__(self, x: Array) -> Array:
        """``[..., in] -> [..., out]``."""
        return x @ self.normalized_kernel() + self.bias[...]


def _sigma(kernel: Array, u: Array, v: Array) -> Array:
    u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
    return jnp.dot(u, v @ kernel)


def spectral_sigmas(module: nnx.Module) -> dict[str, Array]:
    """Sigma estimate ``[]`` of every ``SpectralNormLinear`` below ``module``, keyed by its path.

    A stacked layer (``scan_blocks``: ``blocks/token_mixer/fc_sn1`` with variables ``[N, ...]``)
    gives one entry per index i, keyed ``blocks/i/token_mixer/fc_sn1`` as in the per-block layout.
    """
    sigmas = {}
    for path, node in nnx.iter_graph(module):
        if isinstance(node, SpectralNormLinear):
            names = [str(p) for p in path]
            sigma = node.sigma()
            if sigma.ndim == 0:
                sigmas["/".join(names)] = sigma
            for i in range(sigma.shape[0] if sigma.ndim else 0):
                sigmas["/".join([*names[:1], str(i), *names[1:]])] = sigma[i]
    return sigmas
