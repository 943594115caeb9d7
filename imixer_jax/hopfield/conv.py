"""Convolution synapses: a linear synapse whose weight is a convolution kernel.

Layers are channels-last: ``pre`` ``[*spatial, C_in]``, ``post`` ``[*spatial_out, C_out]`` (any
number of spatial axes; leading batch axes on the states). The feedforward current into post is
the convolution ``conv(g_pre) + forward_bias`` (``lax.conv_general_dilated``), the feedback
current into pre the transposed convolution ``conv^T(g_post) + feedback_bias``, in closed form by
``jax.linear_transpose`` of the forward map, so that the synapse is tied and its energy
``-<g_post, conv(g_pre)> - <forward_bias, g_post> - <feedback_bias, g_pre>`` has exactly these
currents as minus its gradients. Strides, padding and dilation are those of
``lax.conv_general_dilated``; the post shape they give is checked against the post layer.
"""

from __future__ import annotations

from math import prod

import jax
import jax.numpy as jnp
from flax import struct

from imixer_jax.hopfield import pytree
from imixer_jax.hopfield.synapses import EnergySynapse, broadcasts_to

Array = jax.Array


@pytree.dataclass
class Conv(EnergySynapse):
    """Tied convolution synapse between ``pre`` and ``post``; closed-form currents.

    Attributes:
      kernel: ``[*window, C_in, C_out]`` (HWIO for two spatial axes).
      forward_bias / feedback_bias: optional biases of the two currents (broadcast against the
        layer they drive, e.g. ``[C_out]``).
      pre / post: names of the layers coupled.
      strides, dilation: per spatial axis (None: all 1).
      padding: ``'SAME'``, ``'VALID'`` or ``((low, high), ...)`` per spatial axis.
    """

    kernel: Array
    forward_bias: Array | None = None
    feedback_bias: Array | None = None
    pre: str = struct.field(pytree_node=False, default="")
    post: str = struct.field(pytree_node=False, default="")
    strides: tuple[int, ...] | None = struct.field(pytree_node=False, default=None)
    padding: str | tuple[tuple[int, int], ...] = struct.field(pytree_node=False, default="SAME")
    dilation: tuple[int, ...] | None = struct.field(pytree_node=False, default=None)

    @property
    def layers(self) -> tuple[str, ...]:
        return (self.pre, self.post)

    @property
    def spatial(self) -> int:
        """Number of spatial axes."""
        return jnp.ndim(self.kernel) - 2

    def _conv(self, g_pre: Array) -> Array:
        """``conv(g_pre)`` without bias: ``[*batch, *spatial, C_in] -> [*batch, *out, C_out]``."""
        n = self.spatial
        batch = g_pre.shape[: g_pre.ndim - n - 1]
        x = g_pre.reshape((prod(batch), *g_pre.shape[len(batch) :]))
        lhs = (0, n + 1, *range(1, n + 1))  # N, C, spatial
        rhs = (n + 1, n, *range(n))  # O, I, spatial
        y = jax.lax.conv_general_dilated(
            x,
            self.kernel.astype(x.dtype),
            window_strides=self.strides or (1,) * n,
            padding=self.padding,
            rhs_dilation=self.dilation,
            dimension_numbers=jax.lax.ConvDimensionNumbers(lhs, rhs, lhs),
        )
        return y.reshape((*batch, *y.shape[1:]))

    def out_shape(self, pre_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Post-layer shape ``(*spatial_out, C_out)`` for a pre layer of ``pre_shape``."""
        probe = jax.ShapeDtypeStruct(tuple(pre_shape), jnp.float32)
        return tuple(jax.eval_shape(self._conv, probe).shape)

    def check(self, shapes: tuple[tuple[int, ...], ...]) -> None:
        (pre, post), n, name = shapes, self.spatial, f"synapse {self.pre}->{self.post}"
        kernel = tuple(jnp.shape(self.kernel))
        if n < 1:
            raise ValueError(f"{name}: kernel must be [*window, C_in, C_out], got shape {kernel}")
        if len(pre) != n + 1 or pre[-1] != kernel[-2]:
            raise ValueError(
                f"{name}: pre layer {tuple(pre)} must be [*spatial ({n} axes), C_in = "
                f"{kernel[-2]}] for a kernel of shape {kernel}"
            )
        for what, value in (("strides", self.strides), ("dilation", self.dilation)):
            if value is not None and len(value) != n:
                raise ValueError(f"{name}: {what} {value} must give one value per spatial axis")
        try:
            out = self.out_shape(pre)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name}: {str(e).splitlines()[0]}") from None
        if tuple(post) != out:
            raise ValueError(
                f"{name}: the convolution maps {tuple(pre)} to {out}, but the post layer has "
                f"shape {tuple(post)}"
            )
        for what, bias, shape in (
            ("forward_bias", self.forward_bias, post),
            ("feedback_bias", self.feedback_bias, pre),
        ):
            if bias is not None and not broadcasts_to(jnp.shape(bias), shape):
                raise ValueError(
                    f"{name}: {what} of shape {jnp.shape(bias)} does not broadcast to its "
                    f"layer's shape {tuple(shape)}"
                )

    def forward(self, g_pre: Array) -> Array:
        """Current into post, ``[*batch, *spatial, C_in] -> [*batch, *spatial_out, C_out]``."""
        out = self._conv(g_pre)
        return out if self.forward_bias is None else out + self.forward_bias

    def backward(self, g_post: Array, pre_shape: tuple[int, ...]) -> Array:
        """Current into pre (the transposed convolution), ``[*batch, *spatial_out, C_out] ->
        [*batch, *pre_shape]``; ``pre_shape`` is needed since strides make it ambiguous."""
        batch = g_post.shape[: g_post.ndim - self.spatial - 1]
        primal = jax.ShapeDtypeStruct((*batch, *pre_shape), g_post.dtype)
        (out,) = jax.linear_transpose(self._conv, primal)(g_post)
        return out if self.feedback_bias is None else out + self.feedback_bias

    def currents(self, g_pre: Array, g_post: Array) -> tuple[Array, Array]:
        return self.backward(g_post, g_pre.shape), self.forward(g_pre)

    def current(self, index, gs, shapes) -> Array:
        """Closed form, any batch axes: the transposed convolution into pre (0; strides make
        its shape ambiguous, so it comes from ``shapes``), the convolution into post (1)."""
        return self.backward(gs[1], shapes[0]) if index == 0 else self.forward(gs[0])

    def reads(self, index: int) -> tuple[int, ...]:
        """Bilinear: the current into one end reads the other end."""
        return (1 - index,)

    def energy(self, g_pre: Array, g_post: Array) -> Array:
        out = -jnp.vdot(g_post, self.forward(g_pre))
        if self.feedback_bias is None:
            return out
        return out - jnp.sum(jnp.broadcast_to(self.feedback_bias, g_pre.shape) * g_pre)
