"""Token mixers as the reduced visible-layer update of a hierarchical Hopfield network
(docs/theory.md#token-mlp, #imlp, #block).

The block input X ``[B, S, D]`` is the visible state, stored channels-first as ``x0 = X^T``
``[B, D, S]`` so that every synapse contracts the token axis and is shared by the D channels. Its
Lagrangian is the per-token LayerNorm over channels (g_0 = LN(X)). Each module assembles a
``HierarchicalNetwork`` from its parameters and returns the network's reduced drive on the
visible layer, i.e. the token-mixing output y:

* ``TokenMLP`` (two layers, visible LN -> hidden GELU): y = fc2(GELU(fc1(LN X))), MLP-Mixer.
* ``IMLP`` (three layers, visible LN -> internal GELU -> hidden GELU): y = fc2(GELU(z*)),
  z* = (1 - F)^{-1}(fc1(LN X)), F = fc_sn2 . GELU . fc_sn1 . GELU, solved by ``n_iter`` fixed-point
  steps from z0 = fc1(LN X) (official FPA; n_iter = 0 is the vanilla token MLP).

Both return the increment that the block adds to X: ``update_rule='residual'`` gives y (the
official MetaFormer skip X + y); ``update_rule='euler'`` gives ``step_size * (y - X)``, an explicit
Euler step of the reduced dynamics (energy-faithful: with tied weights and convex Lagrangians it
lowers E~ for a small step). ``tied=True`` is the pure Hopfield model: feedback synapses reuse the
transposed feedforward kernels (fc2 and fc_sn2 keep only their biases) and the LayerNorm gain is a
scalar, so the energy exists.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
from flax import nnx

from imixer_jax.hopfield import Dense, HierarchicalNetwork, Implicit, Layer, Unrolled, lagrangians
from imixer_jax.models.layers import MLP_BIAS_INIT, hidden_lagrangian, mlp_linear
from imixer_jax.models.partitioning import REPLICATED_VECTOR, gather_weights, split
from imixer_jax.models.spectral_norm import SpectralNormLinear

Array = jax.Array

UPDATE_RULES = ("residual", "euler")
ADJOINTS = ("unrolled", "implicit")
ACTIVATIONS = ("gelu", "relu", "softplus", "identity")


class VisibleNorm(nnx.Module):
    """Parameters of the visible layer's LayerNorm Lagrangian: scale ``[D]`` (``[]`` if scalar)
    and bias ``[D]``; eps 1e-6 as the official LayerNorm. Replicated."""

    def __init__(self, dim: int, *, scalar_scale: bool = False):
        scale_shape = () if scalar_scale else (dim,)
        self.scale = nnx.Param(
            jnp.ones(scale_shape, jnp.float32), **split(*(None,) * len(scale_shape))
        )
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32), **REPLICATED_VECTOR)

    def lagrangian(self) -> lagrangians.LayerNorm:
        """LayerNorm over the channel axis of a channels-first ``[..., D, S]`` state."""
        scale = self.scale[...]
        return lagrangians.LayerNorm(
            gamma=scale if scale.ndim == 0 else scale[:, None],
            delta=self.bias[...][:, None],
            eps=1e-6,
            axis=-2,
        )


class FeedbackBias(nnx.Module):
    """The bias of a tied feedback synapse (its kernel is the transposed feedforward kernel), the
    second layer's bias: replicated."""

    def __init__(self, features: int, *, rngs: nnx.Rngs):
        self.bias = nnx.Param(MLP_BIAS_INIT(rngs.params(), (features,)), **REPLICATED_VECTOR)


def _feedback(n_in: int, n_out: int, tied: bool, rngs: nnx.Rngs) -> nnx.Linear | FeedbackBias:
    if tied:
        return FeedbackBias(n_out, rngs=rngs)
    return mlp_linear(n_in, n_out, parallel="row", rngs=rngs)


def check_arguments(
    *,
    token_dim: int,
    hidden_ratio: float = 2.0,
    n_iter: int = 0,
    n_power: int = 8,
    sn_coeff: float = 0.9,
    adjoint: str = "unrolled",
    tol: float = 0.0,
    activation: str = "gelu",
    update_rule: str = "residual",
    step_size: float = 1.0,
) -> None:
    """Raise a one-line ValueError naming the first invalid token-mixer argument (the single
    place these are checked; ``Mixer`` calls it too, before building anything)."""
    for name, value, allowed in (
        ("adjoint", adjoint, ADJOINTS),
        ("activation", activation, ACTIVATIONS),
        ("update_rule", update_rule, UPDATE_RULES),
    ):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    if not isinstance(n_iter, numbers.Integral) or n_iter < 0:
        raise ValueError(f"n_iter must be an integer >= 0, got {n_iter!r}")
    if not isinstance(n_power, numbers.Integral) or n_power < 1:
        raise ValueError(f"n_power must be a positive integer, got {n_power!r}")
    positive = {"hidden_ratio": hidden_ratio, "sn_coeff": sn_coeff, "step_size": step_size}
    for name, value in positive.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
    if int(token_dim * hidden_ratio) < 1:
        raise ValueError(f"hidden_ratio {hidden_ratio} gives no iMLP hidden neurons")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")


def _keep_last(_, value):
    return value


class _HopfieldTokenMixer(nnx.Module):
    """Shared visible layer, update rule and intermediates of the token mixers.

    ``recompute_activations=True`` (``remat='activations'``) saves for the backward pass the
    states of the neurons (the matmul outputs), not their activations and what differentiating
    them needs, and computes the activations again there (``reduction.solve_fast(recompute=...)``):
    per iMLP fixed-point step two arrays instead of about eight, no matmul repeated; gradients
    equal to round-off.

    ``sow_intermediates`` (False by default, so training never computes them; set it with
    ``nnx.view(module, sow_intermediates=True)``) makes each call sow, as ``nnx.Intermediate``:
    ``residuals`` ``[n_iter]`` and ``steps`` ``[]`` (fixed-point solver, iMLP), ``sigma`` ``[]``
    on each spectrally normalised layer (``fc_sn1``, ``fc_sn2``), and for tied weights
    ``energy_before`` / ``energy_after`` ``[B]`` (reduced energy at X and at X + increment).
    """

    def _init_visible(
        self,
        dim,
        activation,
        approximate_gelu,
        tied,
        update_rule,
        step_size,
        recompute_activations,
        dtype,
    ):
        self.norm = VisibleNorm(dim, scalar_scale=tied)
        self.recompute_activations = recompute_activations
        self.activation = activation
        self.approximate_gelu = approximate_gelu
        self.tied = tied
        self.update_rule = update_rule
        self.step_size = step_size
        self.dtype = dtype
        self.sow_intermediates = False

    def set_view(self, sow_intermediates: bool | None = None) -> None:
        """Used by ``nnx.view``: switch the sowing of intermediates on or off."""
        if sow_intermediates is not None:
            self.sow_intermediates = sow_intermediates

    def _hidden(self, shape) -> Layer:
        return Layer(hidden_lagrangian(self.activation, self.approximate_gelu), shape)

    def __call__(self, x: Array) -> Array:
        """``x: [B, S, D] -> increment [B, S, D]`` (sows intermediates if ``sow_intermediates``)."""
        x0 = jnp.swapaxes(x, 1, 2)  # [B, D, S]: the visible state, channels-first
        net, per_step = gather_weights(self._networks(x0.shape[1:]), x.shape, "channels")
        if self.dtype is not None:
            x0, net, per_step = jax.tree.map(lambda a: a.astype(self.dtype), (x0, net, per_step))
        fast, solution = self._solve(net, x0, per_step)
        y = net.reduced_current(x0, fast, recompute=self.recompute_activations)
        increment = y if self.update_rule == "residual" else self.step_size * (y - x0)
        if self.sow_intermediates:
            self._sow(net, x0, fast, increment, solution)
        return jnp.swapaxes(increment, 1, 2).astype(x.dtype)

    def _sow(self, net, x0, fast, increment, solution) -> None:
        def sow(module, name, value):
            module.sow(nnx.Intermediate, name, value, reduce_fn=_keep_last, init_fn=tuple)

        if solution is not None:
            sow(self, "residuals", solution.residuals)
            sow(self, "steps", solution.steps)
        for _, node in nnx.iter_graph(self):
            if isinstance(node, SpectralNormLinear):
                sow(node, "sigma", node.sigma())
        if self.tied:
            after = x0 + increment
            fast_after, _ = self._solve(net, after, None)
            sow(self, "energy_before", net.reduced_energy(x0, fast))
            sow(self, "energy_after", net.reduced_energy(after, fast_after))


class TokenMLP(_HopfieldTokenMixer):
    """MLP-Mixer token MLP: the reduced update of a two-layer HHN (LN visible, GELU hidden).

    Params: ``norm`` (scale ``[D]``, bias ``[D]``), ``fc1`` (kernel ``[S, T]``, bias ``[T]``),
    ``fc2`` (kernel ``[T, S]``, bias ``[S]``; tied: bias only).
    """

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        token_dim: int,
        *,
        activation: str = "gelu",
        approximate_gelu: bool = False,
        tied: bool = False,
        update_rule: str = "residual",
        step_size: float = 1.0,
        recompute_activations: bool = False,
        dtype=None,
        rngs: nnx.Rngs,
    ):
        check_arguments(
            token_dim=token_dim, activation=activation, update_rule=update_rule, step_size=step_size
        )
        self._init_visible(
            dim,
            activation,
            approximate_gelu,
            tied,
            update_rule,
            step_size,
            recompute_activations,
            dtype,
        )
        self.fc1 = mlp_linear(num_tokens, token_dim, parallel="column", rngs=rngs)
        self.fc2 = _feedback(token_dim, num_tokens, tied, rngs)

    def _networks(self, visible_shape):
        dim, num_tokens = visible_shape
        token_dim = self.fc1.kernel[...].shape[1]
        net = HierarchicalNetwork(
            layers=(
                Layer(self.norm.lagrangian(), (dim, num_tokens)),
                self._hidden((dim, token_dim)),
            ),
            synapses=(_synapse(self.fc1, self.fc2),),
        )
        return net, None

    def _solve(self, net, x0, per_step=None):
        return net.solve_fast_layers(x0, recompute=self.recompute_activations)


class IMLP(_HopfieldTokenMixer):
    """iMixer token mixer: the reduced update of a three-layer HHN (LN -> GELU -> GELU).

    Params: ``norm``, ``fc1`` ``[S, T]``, ``fc2`` ``[T, S]`` (tied: bias only), ``fc_sn1``
    ``[T, H]`` and ``fc_sn2`` ``[H, T]`` (tied: bias only), H = int(T * hidden_ratio); fc_sn1 and
    fc_sn2 are softly spectrally normalised (``spectral_norm=True``) with persistent u, v.

    Solver: at most ``n_iter`` iterations, early stop at relative step ``tol`` over the whole
    batch (0: exactly ``n_iter``, official). ``adjoint='unrolled'`` back-propagates through the
    iterations (official; in training the spectral norm advances per iteration, as the official
    per-call hook);
    ``adjoint='implicit'`` uses implicit-function-theorem gradients (power iteration once per
    forward so that the map is stationary).
    """

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        token_dim: int,
        *,
        hidden_ratio: float = 2.0,
        n_iter: int = 2,
        n_power: int = 8,
        sn_coeff: float = 0.9,
        spectral_norm: bool = True,
        tied: bool = False,
        adjoint: str = "unrolled",
        tol: float = 0.0,
        activation: str = "gelu",
        approximate_gelu: bool = False,
        update_rule: str = "residual",
        step_size: float = 1.0,
        recompute_activations: bool = False,
        dtype=None,
        rngs: nnx.Rngs,
    ):
        check_arguments(
            token_dim=token_dim,
            hidden_ratio=hidden_ratio,
            n_iter=n_iter,
            n_power=n_power,
            sn_coeff=sn_coeff,
            adjoint=adjoint,
            tol=tol,
            activation=activation,
            update_rule=update_rule,
            step_size=step_size,
        )
        hidden_dim = int(token_dim * hidden_ratio)
        self._init_visible(
            dim,
            activation,
            approximate_gelu,
            tied,
            update_rule,
            step_size,
            recompute_activations,
            dtype,
        )
        self.n_iter = n_iter
        self.tol = tol
        self.adjoint = adjoint
        self.fc1 = mlp_linear(num_tokens, token_dim, parallel="column", rngs=rngs)
        self.fc2 = _feedback(token_dim, num_tokens, tied, rngs)
        if spectral_norm:

            def linear(n_in, n_out, parallel):
                return SpectralNormLinear(
                    n_in, n_out, coeff=sn_coeff, n_power=n_power, parallel=parallel, rngs=rngs
                )
        else:

            def linear(n_in, n_out, parallel):
                return mlp_linear(n_in, n_out, parallel=parallel, rngs=rngs)

        self.fc_sn1 = linear(token_dim, hidden_dim, "column")
        if tied:
            self.fc_sn2 = FeedbackBias(token_dim, rngs=rngs)
        else:
            self.fc_sn2 = linear(hidden_dim, token_dim, "row")
        self.spectral_norm = spectral_norm

    def _networks(self, visible_shape):
        dim, num_tokens = visible_shape
        token_dim = self.fc1.kernel[...].shape[1]
        hidden_dim = self.fc_sn1.kernel[...].shape[1]
        layers = (
            Layer(self.norm.lagrangian(), (dim, num_tokens)),
            self._hidden((dim, token_dim)),
            self._hidden((dim, hidden_dim)),
        )
        first = _synapse(self.fc1, self.fc2)
        k1, k2 = self._sn_kernels()
        if k1.ndim == 2:
            second = _synapse(self.fc_sn1, self.fc_sn2, k1, k2)
            return HierarchicalNetwork(layers, (first, second)), None
        # Official per-call spectral norm: fixed-point step k uses its own kernels k1[k], k2[k];
        # every other array of the per-step network is broadcast along the leading step axis.
        last = _synapse(self.fc_sn1, self.fc_sn2, k1[-1], None if k2 is None else k2[-1])
        net = HierarchicalNetwork(layers, (first, last))
        per_step = jax.tree.map(lambda a: jnp.broadcast_to(a, (self.n_iter, *a.shape)), net)
        second = per_step.synapses[1].replace(weight=k1, feedback=k2)
        return net, per_step.replace(synapses=(per_step.synapses[0], second))

    def _sn_kernels(self) -> tuple[Array, Array | None]:
        """Kernels of fc_sn1 and fc_sn2 (None when tied): ``[in, out]`` each, or
        ``[n_iter, in, out]`` under the official per-call schedule (unrolled, training)."""
        modules = [self.fc_sn1] if self.tied else [self.fc_sn1, self.fc_sn2]
        if not self.spectral_norm:
            kernels = [m.kernel[...] for m in modules]
        elif self.fc_sn1.deterministic or self.n_iter == 0:
            # Evaluation, or n_iter = 0 (the official layers are never called): u, v stay put.
            kernels = [m.current_kernel() for m in modules]
        elif self.adjoint == "unrolled":
            kernels = [m.normalized_kernels(self.n_iter) for m in modules]
        else:  # implicit: one power-iteration update per forward keeps the map stationary
            kernels = [m.normalized_kernels(1)[0] for m in modules]
        return kernels[0], None if self.tied else kernels[1]

    def _solve(self, net, x0, per_step=None):
        # The solver fully unrolls small n_iter (solver.UNROLL_MAX): a rolled loop of two steps
        # cost three times one step on a GPU. One residual over the batch: the sown residuals
        # and steps are the block's, ``[n_iter]`` and ``[]``.
        adjoint = Unrolled(per_step=per_step) if self.adjoint == "unrolled" else Implicit()
        return net.solve_fast_layers(
            x0,
            max_steps=self.n_iter,
            tol=self.tol,
            adjoint=adjoint,
            per_sample=False,
            recompute=self.recompute_activations,
        )


def _synapse(forward, feedback, weight: Array | None = None, feedback_weight=None) -> Dense:
    """Synapse from a forward Linear and a feedback module (Linear, or FeedbackBias when tied).

    ``weight``/``feedback_weight`` override the modules' raw kernels (spectrally normalised ones).
    """
    if weight is None:
        weight = forward.kernel[...]
    if feedback_weight is None and not isinstance(feedback, FeedbackBias):
        feedback_weight = feedback.kernel[...]
    return Dense(
        weight=weight,
        feedback=feedback_weight,
        forward_bias=forward.bias[...],
        feedback_bias=feedback.bias[...],
    )
