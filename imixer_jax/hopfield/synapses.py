"""Synapses: the couplings of a Hopfield network, each defined by its energy.

A synapse couples the layers named in ``layers`` (one name for a self-coupling such as attention,
two for an edge). It contributes ``energy(*gs)`` to the network energy (a scalar of one sample,
the activations ``gs`` of its layers without batch axes) and the currents ``-dE/dg`` into its
layers. ``EnergySynapse`` (the base class) takes the currents from ``jax.grad`` of the energy, so a
user-defined synapse only writes its energy::

    @hopfield.dataclass
    class Attention(EnergySynapse):               # Energy Transformer style, one layer [N, D]
        wq: Array; wk: Array
        layers: tuple[str, ...] = struct.field(pytree_node=False, default=("tokens",))
        def energy(self, g):
            scores = (g @ self.wq) @ (g @ self.wk).T          # [N, N]
            return -jnp.sum(jax.nn.logsumexp(scores, axis=-1))

``Dense`` is the linear synapse, written in closed form: an einsum spec on the unbatched states
says which axes of the presynaptic layer the kernel contracts and which it shares, e.g. for an
``[S, D]`` visible layer a token synapse ``'sd,st->td'`` (contracts S, shared by the D channels)
and a channel synapse ``'sd,dc->sc'`` (contracts D, shared by the S tokens). Dense synapses may
be untied: an independent ``feedback`` kernel drives the presynaptic layer (symmetry broken; the
dynamics stay defined, the energy does not). ``Directed`` is a one-way linear synapse (current into
post only), e.g. a symmetry-breaking term added next to a tied synapse.
"""

from __future__ import annotations

from collections.abc import Callable
from math import prod
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import struct

from imixer_jax.hopfield import pytree

Array = jax.Array


class EnergySynapse:
    """Base class of a synapse defined by its energy (subclass it as a ``hopfield.dataclass``).

    Subclasses set the static field ``layers`` and write ``energy``; ``currents`` follows by
    ``jax.grad``. ``tied`` is True when the currents are minus the gradient of ``energy`` (the
    network energy exists); a subclass that overrides ``currents`` with something else sets
    ``tied = False``. Layers are addressed by position (``index`` into the layers the synapse
    couples), so one synapse can couple several tuples of layers of a network.

    What a network asks of a synapse, each with a default here that closed-form synapses
    override: ``energy`` (one sample), ``current`` (batched), ``reads`` (its dependencies, for
    the reduction's schedule) and ``check`` (layer shapes, at construction).
    """

    layers: tuple[str, ...]
    tied: ClassVar[bool] = True

    def energy(self, *gs: Array) -> Array:
        """Energy of one sample (activations without batch axes): a scalar."""
        raise NotImplementedError(f"{type(self).__name__} must define energy(*gs)")

    def currents(self, *gs: Array) -> tuple[Array, ...]:
        """Currents ``-dE/dg`` into each of its layers, shaped like ``gs`` (one sample)."""
        return tuple(-c for c in jax.grad(self.energy, argnums=tuple(range(len(gs))))(*gs))

    def current(
        self, index: int, gs: tuple[Array, ...], shapes: tuple[tuple[int, ...], ...]
    ) -> Array | None:
        """Current into its ``index``-th layer from the batched activations ``gs`` (one per
        layer, each ``[*batch, *shape]``; ``shapes`` the layers' shapes without batch axes);
        None for no current. Default: ``currents`` mapped over the batch axes."""
        return per_sample(lambda *g: self.currents(*g)[index], gs, shapes)

    def reads(self, index: int) -> tuple[int, ...]:
        """Positions of the layers whose activations the current into layer ``index`` reads
        (default: all of them)."""
        return tuple(range(len(self.layers)))

    def check(self, shapes: tuple[tuple[int, ...], ...]) -> None:
        """Raise a one-line ValueError if the synapse cannot couple layers of these shapes."""


def per_sample(fn: Callable, xs: tuple[Array, ...], shapes: tuple[tuple[int, ...], ...]):
    """``fn`` of one sample's arrays ``xs`` (each ``[*batch, *shape]``) mapped over their
    (flattened) leading batch axes; the outputs get the batch axes back."""
    batch = xs[0].shape[: xs[0].ndim - len(shapes[0])]
    flat = tuple(x.reshape((prod(batch), *s)) for x, s in zip(xs, shapes))
    out = jax.vmap(fn)(*flat)
    return jax.tree.map(lambda t: t.reshape(batch + t.shape[1:]), out)


def broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether an array of ``shape`` broadcasts to exactly ``target``."""
    try:
        return jnp.broadcast_shapes(tuple(shape), tuple(target)) == tuple(target)
    except ValueError:
        return False


def promote_rank(a: Array | float, ndim: int) -> Array:
    """``a`` with leading unit axes up to rank ``ndim``: broadcasting's rank promotion written as
    a reshape, as ``nnx.Linear`` and ``nnx.LayerNorm`` lift their bias and scale. Its transpose
    is a reshape too (a broadcast's is a sum over the unit axes), so the gradients of a layer
    written with it compile to the same program as the nnx layer's, bit for bit."""
    a = jnp.asarray(a)
    return a.reshape((1,) * (ndim - a.ndim) + a.shape)


def _plus(out: Array, bias: Array | None) -> Array:
    """``out + bias``, the bias promoted to the rank of ``out`` (``promote_rank``)."""
    return out if bias is None else out + promote_rank(bias, out.ndim)


def _parse(spec: str) -> tuple[str, str, str]:
    """``'pre,kernel->post'`` as three axis strings; a leading ``...`` on pre and post (shared
    leading axes of any number) is dropped, since batch axes are leading too."""
    try:
        inputs, post = spec.replace(" ", "").split("->")
        pre, kernel = inputs.split(",")
    except ValueError:
        raise ValueError(
            f"einsum spec {spec!r} must read 'pre,kernel->post', e.g. 'sd,st->td'"
        ) from None
    if pre.startswith("...") != post.startswith("...") or "." in kernel:
        raise ValueError(f"einsum spec {spec!r}: '...' may lead both pre and post, nothing else")
    pre, post = pre.removeprefix("..."), post.removeprefix("...")
    if set(post) - set(pre + kernel) or "." in pre + post:
        raise ValueError(f"einsum spec {spec!r}: every post axis must come from pre or kernel")
    return pre, kernel, post


def contract(x: Array, x_axes: str, w: Array, w_axes: str, out_axes: str) -> Array:
    """``einsum('...x_axes,w_axes->...out_axes', x, w)`` for states ``x`` with leading batch axes.

    Written as one ``dot_general`` with the state first and the kernel second (the operand order
    of ``nnx.Linear``; ``jnp.einsum`` may put the kernel first, a different GEMM and different
    float32 rounding), then a transpose into ``out_axes`` order. Specs that are not a plain
    contraction (an axis kept from both operands, or summed within one) go to ``jnp.einsum``.
    """
    lead = x.ndim - len(x_axes)
    summed = [a for a in x_axes if a in w_axes]
    free = [a for a in x_axes if a not in summed] + [a for a in w_axes if a not in summed]
    if sorted(free) != sorted(out_axes) or len(set(x_axes + w_axes)) != len(free) + len(summed):
        return jnp.einsum(f"...{x_axes},{w_axes}->...{out_axes}", x, w)
    dtype = jnp.result_type(x, w)
    x, w = x.astype(dtype), w.astype(dtype)
    k = len(summed)
    if (
        x_axes.endswith("".join(summed))
        and w_axes.startswith("".join(summed))
        and _only_the_first_mesh_axis_splits()
    ):
        # The contraction as one 2D GEMM [rows, K] @ [K, cols] (free reshapes of row-major
        # arrays). A multi-axis contraction gives the same forward GEMM, but its weight gradient
        # contracts over several axes, and XLA:CPU then copies the cotangent transposed before
        # the GEMM; as a 2D product the weight gradient reads both operands in place.
        rows, cols = x.reshape(-1, prod(w.shape[:k])), w.reshape(prod(w.shape[:k]), -1)
        y = jax.lax.dot_general(rows, cols, (((1,), (0,)), ((), ())))
        y = y.reshape(x.shape[: x.ndim - k] + w.shape[k:])
    else:
        dims = ([lead + x_axes.index(a) for a in summed], [w_axes.index(a) for a in summed])
        y = jax.lax.dot_general(x, w, (dims, ((), ())))
    perm = (*range(lead), *(lead + free.index(a) for a in out_axes))
    return y if perm == tuple(range(y.ndim)) else jnp.transpose(y, perm)


def _only_the_first_mesh_axis_splits() -> bool:
    """Whether no axis of the ambient mesh (if any) but its first has size > 1. A mesh's first
    axis splits the batch, the leading axis of every state ('data' of the trainer's ('data',
    'model') mesh); a later one may split an inner axis (tokens, channels), and merging that with
    the batch into GEMM rows makes XLA's SPMD partitioner gather it (an all-gather on a (1, 4)
    mesh, none on (4, 1)): iMixer-S/16 on a (4, 4) v5e mesh held 20.4 GiB of temporaries per chip
    that way, against 3.5 GiB with the axes kept."""
    mesh = jax.sharding.get_abstract_mesh()
    return mesh.empty or all(size == 1 for size in tuple(mesh.shape.values())[1:])


@pytree.dataclass
class Dense(EnergySynapse):
    """Linear synapse between ``pre`` and ``post``; closed-form currents.

    Feedforward current into post: ``einsum(spec, g_pre, weight) + forward_bias``; feedback
    current into pre: ``einsum(post, fb_kernel -> pre) + feedback_bias`` with ``fb_kernel`` the
    ``weight`` (tied: symmetric coupling) or ``feedback``, whose axes are those of ``weight`` in
    reverse order (``[n_post, n_pre]`` for the default spec). Biases broadcast against the layer
    they drive. Energy (tied): ``-<g_post, weight . g_pre> - <forward_bias, g_post> -
    <feedback_bias, g_pre>``.

    Attributes:
      weight: kernel, axes as in ``spec`` (``[n_pre, n_post]`` for the default
        ``'...i,io->...o'``, which contracts the last axis and shares the others).
      feedback: untied feedback kernel (axes of ``weight`` reversed), or None for tied.
      forward_bias / feedback_bias: optional biases of the two currents.
      pre / post: names of the layers coupled (filled in by ``HierarchicalNetwork`` for chains).
      spec: einsum on unbatched states ``'pre_axes,kernel_axes->post_axes'`` (a leading ``...``
        on both sides: any shared leading axes).
      dtype: compute dtype (None: the operands' promoted dtype): activations, kernel and bias are
        cast to it at each use, so float32 master weights run bfloat16 contractions while their
        gradients accumulate in float32 (as ``nnx.Linear(dtype=...)``).
    """

    weight: Array
    feedback: Array | None = None
    forward_bias: Array | None = None
    feedback_bias: Array | None = None
    pre: str = struct.field(pytree_node=False, default="")
    post: str = struct.field(pytree_node=False, default="")
    spec: str = struct.field(pytree_node=False, default="...i,io->...o")
    dtype: jnp.dtype | None = struct.field(pytree_node=False, default=None)

    @property
    def layers(self) -> tuple[str, ...]:
        return (self.pre, self.post)

    @property
    def tied(self) -> bool:
        return self.feedback is None

    def check(self, shapes: tuple[tuple[int, ...], ...]) -> None:
        pre, kernel, post = _parse(self.spec)
        sizes: dict[str, int] = {}
        named = [
            ("pre layer", pre, shapes[0]),
            ("kernel", kernel, jnp.shape(self.weight)),
        ]
        named.append(("post layer", post, shapes[1]))
        if self.feedback is not None:
            named.append(("feedback kernel", kernel[::-1], jnp.shape(self.feedback)))
        for what, axes, shape in named:
            exact = what.endswith("kernel") or "..." not in self.spec
            if len(axes) > len(shape) or (exact and len(axes) != len(shape)):
                raise ValueError(
                    f"synapse {self.pre}->{self.post}: {what} has shape {tuple(shape)} but "
                    f"spec {self.spec!r} gives it {len(axes)} axes"
                )
            for axis, size in zip(axes, shape[len(shape) - len(axes) :]):
                if sizes.setdefault(axis, size) != size:
                    raise ValueError(
                        f"synapse {self.pre}->{self.post}: axis {axis!r} of the {what} has size "
                        f"{size}, elsewhere {sizes[axis]} (spec {self.spec!r})"
                    )
        lead_pre, lead_post = (
            shapes[0][: len(shapes[0]) - len(pre)],
            shapes[1][: len(shapes[1]) - len(post)],
        )
        if lead_pre != lead_post:
            raise ValueError(
                f"synapse {self.pre}->{self.post}: the shared leading axes differ, "
                f"{lead_pre} vs {lead_post} (spec {self.spec!r})"
            )
        for what, bias, shape in (
            ("forward_bias", self.forward_bias, shapes[1]),
            ("feedback_bias", self.feedback_bias, shapes[0]),
        ):
            if bias is not None and not broadcasts_to(jnp.shape(bias), shape):
                raise ValueError(
                    f"synapse {self.pre}->{self.post}: {what} of shape {jnp.shape(bias)} does "
                    f"not broadcast to its layer's shape {shape}"
                )

    def forward(self, g_pre: Array) -> Array:
        """Current into post, ``[..., *pre_shape] -> [..., *post_shape]``."""
        pre, kernel, post = _parse(self.spec)
        g_pre, weight, bias = self._cast(g_pre, self.weight, self.forward_bias)
        return _plus(contract(g_pre, pre, weight, kernel, post), bias)

    def backward(self, g_post: Array) -> Array:
        """Current into pre, ``[..., *post_shape] -> [..., *pre_shape]``."""
        pre, kernel, post = _parse(self.spec)
        tied = self.feedback is None
        g_post, weight, bias = self._cast(
            g_post, self.weight if tied else self.feedback, self.feedback_bias
        )
        return _plus(contract(g_post, post, weight, kernel if tied else kernel[::-1], pre), bias)

    def _cast(self, *arrays: Array | None) -> tuple[Array | None, ...]:
        """The arrays in ``dtype``, all cast before any is used (as ``nnx.Linear`` does)."""
        if self.dtype is None:
            return arrays
        return tuple(None if a is None else jnp.asarray(a).astype(self.dtype) for a in arrays)

    def currents(self, g_pre: Array, g_post: Array) -> tuple[Array, Array]:
        return self.backward(g_post), self.forward(g_pre)

    def current(self, index, gs, shapes) -> Array | None:
        """Closed form, any batch axes: ``backward`` into pre (0), ``forward`` into post (1)."""
        return self.backward(gs[1]) if index == 0 else self.forward(gs[0])

    def reads(self, index: int) -> tuple[int, ...]:
        """Bilinear: the current into one end reads the other end."""
        return (1 - index,)

    def energy(self, g_pre: Array, g_post: Array) -> Array:
        out = -jnp.vdot(g_post, self.forward(g_pre))
        if self.feedback_bias is None:
            return out
        return out - jnp.sum(jnp.broadcast_to(self.feedback_bias, g_pre.shape) * g_pre)


@pytree.dataclass
class Directed(Dense):
    """One-way linear synapse: current ``einsum(spec, g_pre, weight) + forward_bias`` into post,
    none back into pre. Never tied (no energy): next to a tied ``Dense`` between the same layers
    it adds a non-conservative term, e.g. the symmetry-breaking W_2 of the asymmetric Mixer,
    ``Directed(w2, pre='hidden', post='visible')``. ``feedback`` and ``feedback_bias`` must be
    None."""

    @property
    def tied(self) -> bool:
        return False

    def check(self, shapes: tuple[tuple[int, ...], ...]) -> None:
        if self.feedback is not None or self.feedback_bias is not None:
            raise ValueError(
                f"synapse {self.pre}->{self.post}: a Directed synapse has no feedback; "
                f"drop feedback/feedback_bias or use Dense"
            )
        super().check(shapes)

    def backward(self, g_post: Array) -> None:
        """No current into pre (None)."""
        return None

    def currents(self, g_pre: Array, g_post: Array) -> tuple[Array, Array]:
        return jnp.zeros_like(g_pre), self.forward(g_pre)

    def reads(self, index: int) -> tuple[int, ...]:
        """No current into pre; the current into post reads pre."""
        return () if index == 0 else (0,)

    def energy(self, g_pre: Array, g_post: Array) -> Array:
        raise ValueError(
            f"synapse {self.pre}->{self.post} is Directed (one-way): it has no energy; "
            f"evaluate the energy of the network without it"
        )
