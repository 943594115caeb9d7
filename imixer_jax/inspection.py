"""Looking inside Hopfield token mixers: energy descent, fixed-point residuals, per-block energies
and spectral sigmas. The library behind ``python -m imixer_jax.inspect`` and
``experiments/energy_descent.ipynb``; every plot function returns a ``matplotlib.figure.Figure``
(no pyplot state, no display backend needed).

Shapes: images ``[B, H, W, 3]`` in [-1, 1]; token matrices ``[B, S, D]``; per-block results are
stacked along a leading block axis ``[num_blocks, ...]``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from matplotlib.figure import Figure

from imixer_jax import checkpointing, data, training
from imixer_jax.hopfield import HierarchicalNetwork, Layer, Synapse, lagrangians
from imixer_jax.models.mixer import Mixer, capture_intermediates
from imixer_jax.models.spectral_norm import spectral_sigmas

Array = jax.Array
F32_EPS = float(np.finfo(np.float32).eps)


# ---------------------------------------------------------------------------------------------
# A toy three-layer network: energy descent.


def three_layer_network(
    key: Array,
    *,
    hidden: tuple[str, str] = ("gelu", "gelu"),
    sizes: tuple[int, int, int] = (16, 24, 12),
    weight_scale: float = 1.0,
    sn_coeff: float = 0.9,
    bias_mean: float = 0.0,
) -> HierarchicalNetwork:
    """A tied three-layer HHN shaped like the iMLP: visible LayerNorm layer (scalar gain 1,
    convex), then two hidden layers with the Lagrangians named in ``hidden`` (``('gelu', 'gelu')``
    as the iMLP, ``('relu', 'relu')`` as a convex counterpart). Synapse 0 is
    ``N(0, weight_scale^2 / n_in)``; synapse 1 is a Gaussian matrix scaled to spectral norm
    ``sn_coeff`` (as the iMLP's soft spectral norm leaves it). Hidden biases ``N(bias_mean,
    0.1^2)``: a negative mean pushes neurons into GELU's falling branch (x < -0.75). All time
    constants 1; states are vectors ``[*batch, n_A]``. The same ``key`` gives the same weights
    whatever the Lagrangians."""
    keys = iter(jax.random.split(key, 4))
    layers = [Layer(lagrangians.LayerNorm(gamma=1.0), (sizes[0],))]
    layers += [
        Layer(
            lagrangians.get(name), (n,), bias=bias_mean + 0.1 * jax.random.normal(next(keys), (n,))
        )
        for name, n in zip(hidden, sizes[1:])
    ]
    w0 = weight_scale * jax.random.normal(next(keys), sizes[:2]) / np.sqrt(sizes[0])
    w1 = jax.random.normal(next(keys), sizes[1:])
    w1 = sn_coeff * w1 / jnp.linalg.norm(w1, ord=2)
    return HierarchicalNetwork(tuple(layers), (Synapse(w0), Synapse(w1)))


@dataclasses.dataclass
class Descent:
    """Energy descent of a batch of trajectories (time t = step * dt).

    Attributes:
      energies: ``[num_steps + 1, batch]`` energy at every visited state.
      rates: ``[num_steps + 1, batch]`` exact dE/dt at every visited state (the derivative of
        the energy along the velocity field, by ``jax.jvp``; no discretisation error). With
        convex Lagrangians it is <= 0 everywhere (SPEC section 1); with GELU it need not be.
      dt: the Euler step.
    """

    energies: np.ndarray
    rates: np.ndarray
    dt: float

    def rising(self) -> dict[str, float]:
        """``fraction`` of visited states with dE/dt > 0 (beyond 1e-5 of the trajectory's
        largest |dE/dt|, float32 rounding), the ``max_rate`` and ``total_rise`` (the largest,
        over trajectories, integral of the positive part of dE/dt: how much the energy went up
        in all)."""
        scale = np.abs(self.rates).max(axis=0)
        up = self.rates > 1e-5 * scale
        positive = np.where(up, self.rates, 0.0)
        return {
            "fraction": float(up.mean()),
            "max_rate": float(self.rates.max()),
            "total_rise": float((positive.sum(axis=0) * self.dt).max()),
        }


def energy_descent(
    net: HierarchicalNetwork,
    key: Array,
    *,
    batch: int = 8,
    dt: float = 0.01,
    num_steps: int = 1500,
    init_scale: float = 2.0,
) -> Descent:
    """Explicit-Euler dynamics of the tied ``net`` from ``batch`` random initial states
    ``N(0, init_scale^2)``: energies and exact energy rates along the trajectories."""
    keys = jax.random.split(key, net.num_layers)
    xs0 = tuple(
        init_scale * jax.random.normal(k, (batch, *layer.shape))
        for k, layer in zip(keys, net.layers)
    )
    energies, states, _ = net.descend(xs0, dt=dt, num_steps=num_steps, return_states=True)
    return Descent(np.asarray(energies), np.asarray(_energy_rates(net, states)), dt)


@jax.jit
def _energy_rates(net: HierarchicalNetwork, states) -> Array:
    """dE/dt ``[steps, batch]`` at every state (each ``[steps, batch, n_A]``)."""
    return jax.vmap(lambda xs: jax.jvp(net.energy, (xs,), (net.dynamics(xs),))[1])(states)


def energy_increases(energies: np.ndarray) -> dict[str, float]:
    """Rises of a sequence of energies ``[steps + 1, ...]`` between consecutive steps.

    A rise counts when it exceeds float32 rounding of the energy, 256 ulp * (1 + |E|) (the energy
    sums up to a few hundred float32 terms of that size). Returns the ``fraction`` of steps that
    rise and ``total_rise``, the largest (over the trailing axes) sum of the rises.
    """
    diff = np.diff(energies, axis=0)
    rise = np.where(diff > 256 * F32_EPS * (1.0 + np.abs(energies[1:])), diff, 0.0)
    return {"fraction": float((rise > 0).mean()), "total_rise": float(rise.sum(axis=0).max())}


def plot_energy_descent(curves: Mapping[str, Descent]) -> Figure:
    """One column per labelled descent: E(t) - E(0) of every trajectory (top) and the positive
    part of dE/dt (bottom; identically zero = the energy never rises)."""
    fig = Figure(figsize=(3.8 * len(curves), 5.0), dpi=100)
    axes = fig.subplots(2, len(curves), squeeze=False, sharex=True)
    for column, (label, descent) in enumerate(curves.items()):
        top, bottom = axes[0, column], axes[1, column]
        t = descent.dt * np.arange(descent.energies.shape[0])
        top.plot(t, descent.energies - descent.energies[:1], lw=1.0, alpha=0.8)
        stats = descent.rising()
        top.set_title(
            f"{label}\ndE/dt > 0 at {100 * stats['fraction']:.1f}% of states, "
            f"rise {stats['total_rise']:.2g}",
            fontsize=9,
        )
        top.set_ylabel("E(t) - E(0)")
        bottom.plot(t, np.maximum(descent.rates, 0.0), lw=1.0, alpha=0.8)
        bottom.set_ylabel("max(dE/dt, 0)")
        bottom.set_xlabel("time t")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Trained models: loading, solver settings, per-block quantities.


@dataclasses.dataclass
class LoadedRun:
    """A run's config, its model (evaluation mode) at checkpoint ``step``, and its workdir."""

    config: ml_collections.ConfigDict
    model: Mixer
    step: int
    workdir: str

    @property
    def model_kwargs(self) -> dict:
        return self.config.model.to_dict()


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run was trained with (``workdir/config.json``, written by the trainer)."""
    with open(os.path.join(workdir, "config.json")) as f:
        return ml_collections.ConfigDict(json.load(f))


def has_checkpoint(workdir: str) -> bool:
    """Whether ``workdir`` holds a config and at least one complete checkpoint."""
    if not os.path.exists(os.path.join(workdir, "config.json")):
        return False
    ckpt = checkpointing.Checkpointer(workdir, every_steps=0, keep=1)
    try:
        return ckpt.latest_step() is not None
    finally:
        ckpt.close()


def load_run(workdir: str, step: int | None = None) -> LoadedRun:
    """The model of checkpoint ``step`` (default: the newest) of the run in ``workdir``."""
    config = load_config(workdir)
    run = training.prepare(config)
    state = training.restore_state(run, workdir, step)
    model = nnx.merge(run.eval_graphdef, state.params, state.rest)
    model.eval()
    return LoadedRun(config=config, model=model, step=int(state.step), workdir=workdir)


def eval_images(config: ml_collections.ConfigDict, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` images ``[count, H, W, 3]`` and labels ``[count]`` of the run's
    evaluation split (count is capped by the split's size)."""
    info = data.dataset_info(
        config.data.name,
        data_dir=config.data.data_dir,
        train_split=config.data.train_split,
        eval_split=config.data.eval_split,
    )
    images, labels = [], []
    for batch in data.eval_batches(
        name=config.data.name,
        data_dir=config.data.data_dir,
        split=info.eval_split,
        image_size=config.model.img_size,
        global_batch_size=min(count, config.eval_batch_size),
        process_index=0,
        process_count=1,
        crop_ratio=config.data.crop_ratio,
    ):
        images.append(batch["image"][batch["mask"]])
        labels.append(batch["label"][batch["mask"]])
        if sum(len(x) for x in images) >= count:
            break
    return np.concatenate(images)[:count], np.concatenate(labels)[:count]


def with_solver(model: Mixer, model_kwargs: Mapping, **solver) -> Mixer:
    """A copy of ``model`` (same arrays, evaluation mode) whose token mixers use other solver or
    update settings, e.g. ``n_iter=50, tol=1e-5, adjoint='implicit'`` or ``update='euler'``.
    Only arguments that leave the parameter structure unchanged are allowed."""
    allowed = {"n_iter", "tol", "adjoint", "update", "step_size"}
    if set(solver) - allowed:
        raise ValueError(f"with_solver changes only {sorted(allowed)}, got {sorted(solver)}")
    kwargs = {**model_kwargs, **solver}
    abstract = nnx.eval_shape(lambda: Mixer(**kwargs, rngs=nnx.Rngs(0)))
    graphdef, _ = nnx.split(abstract)
    copy = nnx.merge(graphdef, nnx.state(model))
    copy.eval()
    return copy


@nnx.jit
def _inspect_forward(model: Mixer, images: Array) -> tuple[Array, dict]:
    logits, sown = capture_intermediates(model, images)
    blocks = nnx.to_pure_dict(sown).get("blocks", {})
    return logits, {f"block_{i}": block["token_mixer"] for i, block in blocks.items()}


def forward(model: Mixer, images) -> tuple[np.ndarray, dict]:
    """Logits ``[B, classes]`` and the per-block inspection dict, on host."""
    logits, info = _inspect_forward(model, jnp.asarray(images))
    return np.asarray(logits), jax.device_get(info)


def settle_spectral_norm(model: Mixer, images) -> None:
    """One training-mode forward on ``images`` (no parameter update): advances the power
    iteration of every spectrally normalised layer as the first training step would, so that
    the sigma estimates of a freshly initialised model are meaningful. Leaves ``model`` in
    evaluation mode."""
    model.train()
    _train_forward(model, jnp.asarray(images))
    model.eval()


@nnx.jit
def _train_forward(model: Mixer, images: Array) -> None:
    model(images, rngs=nnx.Rngs(dropout=0))


def residuals(info: Mapping) -> np.ndarray:
    """Fixed-point residual per iteration ``[num_blocks, n_iter]`` from a forward's inspection
    dict (NaN for iterations not run after an early stop)."""
    return np.stack([np.asarray(info[f"block_{i}"]["residuals"]) for i in range(len(info))])


def block_energies(info: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """Reduced energy of every block's token-mixer network before and after its update, each
    ``[num_blocks, B]`` (tied models only)."""
    blocks = [info[f"block_{i}"] for i in range(len(info))]
    if "energy_before" not in blocks[0]:
        raise ValueError("the energy exists only for tied models (model.tied=True)")
    before = np.stack([np.asarray(b["energy_before"]) for b in blocks])
    after = np.stack([np.asarray(b["energy_after"]) for b in blocks])
    return before, after


def block_sigmas(model: Mixer) -> dict[str, np.ndarray]:
    """Spectral-norm sigma estimate (of the raw kernel, before the soft normalisation) of every
    block: ``{'fc_sn1': [num_blocks], 'fc_sn2': [num_blocks]}`` (fc_sn2 absent when tied)."""
    out: dict[str, list[float]] = {}
    for path, sigma in spectral_sigmas(model).items():
        out.setdefault(path.rsplit("/", 1)[-1], []).append(float(sigma))
    return {name: np.asarray(values) for name, values in out.items()}


def block_inputs(model: Mixer, images) -> list[Array]:
    """Input token matrix ``[B, S, D]`` of every block (the backbone's stem and blocks, run
    one by one)."""
    x = model.embed(jnp.asarray(images))
    inputs = []
    for block in model.blocks:
        inputs.append(x)
        x = block(x)
    return inputs


def block_energy_descent(
    model: Mixer,
    model_kwargs: Mapping,
    images,
    *,
    step_size: float = 0.1,
    num_steps: int = 60,
    n_iter: int = 100,
    tol: float = 1e-6,
) -> np.ndarray:
    """Reduced energy ``[num_blocks, num_steps + 1, B]`` along ``num_steps`` Euler steps
    X <- X + step_size (y(X) - X) of every block's token-mixer network (tied models only),
    started from the block's actual input; fast layers solved to ``tol`` (at most ``n_iter``
    iterations) at every step, as the reduced dynamics assume."""
    if not model_kwargs["tied"]:
        raise ValueError("the energy exists only for tied models (model.tied=True)")
    euler = with_solver(
        model,
        model_kwargs,
        update="euler",
        step_size=step_size,
        n_iter=n_iter,
        tol=tol,
        adjoint="implicit",
    )
    curves = []
    for block, x0 in zip(euler.blocks, block_inputs(euler, images)):
        graphdef, state = nnx.split(block.token_mixer)
        curves.append(np.asarray(_descend_block(graphdef, state, x0, num_steps)))
    return np.stack(curves)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _descend_block(graphdef, state, x0: Array, num_steps: int) -> Array:
    def energy_and_increment(x):
        increment, sown = capture_intermediates(nnx.merge(graphdef, state), x)
        return sown["energy_before"][...], increment

    def step(x, _):
        energy, increment = energy_and_increment(x)
        return x + increment, energy

    final, energies = jax.lax.scan(step, x0, None, length=num_steps)
    return jnp.concatenate([energies, energy_and_increment(final)[0][None]])


# ---------------------------------------------------------------------------------------------
# Plots of a model.


def plot_residuals(
    curves: Mapping[str, np.ndarray], *, mark: int | None = None, title: str = ""
) -> Figure:
    """One panel per labelled residual array ``[num_blocks, iterations]`` (log scale, one line
    per block); ``mark`` draws a vertical line at that iteration (e.g. the trained n_iter)."""
    fig = Figure(figsize=(4.2 * len(curves), 3.2), dpi=100)
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    for ax, (label, res) in zip(axes, curves.items()):
        its = np.arange(1, res.shape[1] + 1)
        for i, row in enumerate(res):
            ax.semilogy(its, row, marker="." if res.shape[1] <= 10 else None, label=f"block {i}")
        if mark is not None:
            ax.axvline(mark, color="gray", ls="--", lw=1)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("iteration k")
        ax.set_ylabel("||z_k - z_(k-1)|| / ||z_k||")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_block_energies(before: np.ndarray, after: np.ndarray, *, title: str = "") -> Figure:
    """Reduced energy of every block before and after its token-mixing update, for one image
    (``before``, ``after``: ``[num_blocks]``)."""
    fig = Figure(figsize=(5.0, 3.2), dpi=100)
    ax = fig.subplots()
    blocks = np.arange(len(before))
    ax.bar(blocks - 0.2, before, width=0.4, label="before update")
    ax.bar(blocks + 0.2, after, width=0.4, label="after update")
    ax.set_xticks(blocks, [f"block {i}" for i in blocks])
    ax.set_ylabel("reduced energy E~")
    ax.axhline(0.0, color="black", lw=0.5)
    ax.legend(fontsize=8)
    ax.set_title(title or "per-block energy (one image)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_block_energy_descent(energies: np.ndarray, *, step_size: float) -> Figure:
    """E~(t) - E~(0) of every block along Euler steps (``energies [num_blocks, steps + 1]``)."""
    fig = Figure(figsize=(5.0, 3.2), dpi=100)
    ax = fig.subplots()
    t = step_size * np.arange(energies.shape[1])
    for i, row in enumerate(energies):
        stats = energy_increases(row)
        ax.plot(t, row - row[0], label=f"block {i} (rises on {100 * stats['fraction']:.0f}%)")
    ax.set_xlabel("time t (Euler steps x step size)")
    ax.set_ylabel("E~(t) - E~(0)")
    ax.set_title("reduced energy along the token-mixer dynamics (one image)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_sigmas(sigmas: Mapping[str, np.ndarray], *, coeff: float) -> Figure:
    """Raw sigma estimate per block for each spectrally normalised layer; the normalised kernel
    has spectral norm min(sigma, coeff)."""
    fig = Figure(figsize=(5.0, 3.2), dpi=100)
    ax = fig.subplots()
    for name, values in sigmas.items():
        ax.plot(np.arange(len(values)), values, marker="o", label=name)
    ax.axhline(coeff, color="gray", ls="--", lw=1, label=f"coefficient c = {coeff}")
    ax.set_xticks(range(max(len(v) for v in sigmas.values())))
    ax.set_xlabel("block")
    ax.set_ylabel("sigma (raw kernel)")
    ax.set_title("spectral-norm sigma per block", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Everything at once (``python -m imixer_jax.inspect``).


TOY_NETWORKS = {
    "ReLU, biases -2": dict(hidden=("relu", "relu"), bias_mean=-2.0),
    "GELU, biases 0": dict(hidden=("gelu", "gelu"), bias_mean=0.0),
    "GELU, biases -2": dict(hidden=("gelu", "gelu"), bias_mean=-2.0),
}


def toy_energy_curves(key: Array, *, dt: float = 0.01, num_steps: int = 1500) -> dict:
    """Energy descent of the tied three-layer networks ``TOY_NETWORKS`` (same weights and
    initial states): ``{label: Descent}``."""
    net_key, state_key = jax.random.split(key)
    return {
        label: energy_descent(
            three_layer_network(net_key, **kwargs), state_key, dt=dt, num_steps=num_steps
        )
        for label, kwargs in TOY_NETWORKS.items()
    }


def write_plots(
    workdir: str, out: str, *, num_images: int = 64, max_iter: int = 50, tol: float = 1e-5
) -> list[str]:
    """Writes the inspection plots of the run in ``workdir`` as PNG files in ``out``.

    * ``energy_descent.png``: a toy tied three-layer HHN, convex vs GELU Lagrangians.
    * ``residuals.png`` (iMixer): fixed-point residual per iteration and block on the first
      ``num_images`` test images, for the trained solver and a converged implicit solve (at
      most ``max_iter`` iterations, tolerance ``tol``).
    * ``sigmas.png`` (iMixer with spectral norm): sigma estimate per block.
    * ``block_energies.png`` and ``block_energy_descent.png`` (tied models): per-block reduced
      energies for one test image.

    Returns the paths written.
    """
    os.makedirs(out, exist_ok=True)
    written = []

    def save(fig: Figure, name: str) -> None:
        path = os.path.join(out, name)
        fig.savefig(path)
        written.append(path)

    save(plot_energy_descent(toy_energy_curves(jax.random.key(0))), "energy_descent.png")
    loaded = load_run(workdir)
    kwargs, model = loaded.model_kwargs, loaded.model
    images, _ = eval_images(loaded.config, num_images)
    if kwargs["token_mixer"] == "imlp" and kwargs["n_iter"] > 0:
        trained = residuals(forward(model, images)[1])
        converged = with_solver(model, kwargs, n_iter=max_iter, tol=tol, adjoint="implicit")
        curves = {
            f"trained solver (n_iter {kwargs['n_iter']}, {kwargs['adjoint']})": trained,
            f"converged (implicit, tol {tol:g}, at most {max_iter})": residuals(
                forward(converged, images)[1]
            ),
        }
        title = f"{os.path.basename(os.path.normpath(workdir))}, step {loaded.step}"
        save(plot_residuals(curves, mark=kwargs["n_iter"], title=title), "residuals.png")
    else:
        logging.info("no fixed-point iteration in this model: residuals.png not written")
    sigmas = block_sigmas(model)
    if sigmas:
        save(plot_sigmas(sigmas, coeff=kwargs["sn_coeff"]), "sigmas.png")
    if kwargs["tied"]:
        before, after = block_energies(forward(model, images[:1])[1])
        save(plot_block_energies(before[:, 0], after[:, 0]), "block_energies.png")
        descent = block_energy_descent(model, kwargs, images[:1])[:, :, 0]
        save(plot_block_energy_descent(descent, step_size=0.1), "block_energy_descent.png")
    else:
        logging.info("untied model: no energy, block energy plots not written")
    return written


def accuracy(logits: np.ndarray, labels: Sequence[int]) -> float:
    """Top-1 accuracy of ``logits [B, classes]``."""
    return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(labels)))
