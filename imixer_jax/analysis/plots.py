"""Plots of the analysis (each returns a ``matplotlib.figure.Figure``: no pyplot state, no
display backend) and ``write_plots``, everything for one run as PNG files
(``python -m imixer_jax.analyze``). matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import jax
import numpy as np
from absl import logging

from imixer_jax.analysis import blocks, runs, toy
from imixer_jax.training.logging import reader, writer

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(**kwargs) -> Figure:
    from matplotlib.figure import Figure

    return Figure(dpi=100, **kwargs)


def plot_energy_descent(curves: Mapping[str, toy.Descent]) -> Figure:
    """One column per labelled descent: E(t) - E(0) of every trajectory (top) and the positive
    part of dE/dt (bottom; identically zero = the energy never rises)."""
    fig = _figure(figsize=(3.8 * len(curves), 5.0))
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


def plot_training_curves(rows: Sequence[Mapping[str, float]], *, title: str = "") -> Figure:
    """The rows of a run's ``metrics.jsonl``: train loss (left) and test top-1 in % (right, with
    EMA's where logged) against the step. Rows without a metric are skipped for that curve."""
    fig = _figure(figsize=(8.4, 3.2))
    loss_ax, top1_ax = fig.subplots(1, 2)

    def curve(ax, key: str, label: str, scale: float = 1.0) -> None:
        points = [(row["step"], row[key]) for row in rows if isinstance(row.get(key), float)]
        if points:
            steps, values = zip(*points)
            ax.plot(
                steps,
                scale * np.asarray(values),
                marker="." if len(points) < 30 else None,
                lw=1.0,
                label=label,
            )

    curve(loss_ax, "train/loss", "train loss")
    loss_ax.set_ylabel("train loss (log window mean)")
    curve(top1_ax, "test/top1", "test top-1", scale=100.0)
    curve(top1_ax, "test_ema/top1", "test top-1 (EMA)", scale=100.0)
    top1_ax.set_ylabel("test top-1 (%)")
    for ax in (loss_ax, top1_ax):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if len(top1_ax.get_lines()) > 1:
        top1_ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_residuals(
    curves: Mapping[str, np.ndarray], *, mark: int | None = None, title: str = ""
) -> Figure:
    """One panel per labelled residual array ``[num_blocks, iterations]`` (log scale, one line
    per block); ``mark`` draws a vertical line at that iteration (e.g. the trained n_iter)."""
    fig = _figure(figsize=(4.2 * len(curves), 3.2))
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
    fig = _figure(figsize=(5.0, 3.2))
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
    fig = _figure(figsize=(5.0, 3.2))
    ax = fig.subplots()
    t = step_size * np.arange(energies.shape[1])
    for i, row in enumerate(energies):
        stats = toy.energy_increases(row)
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
    fig = _figure(figsize=(5.0, 3.2))
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


def write_plots(
    workdir: str, out: str, *, num_images: int = 64, max_iter: int = 50, tol: float = 1e-5
) -> list[str]:
    """Writes the plots of the run in ``workdir`` as PNG files in ``out`` (created after the
    run's checkpoint and images loaded).

    * ``training_curves.png``: train loss and test top-1 against the step
      (``metrics.jsonl``).
    * ``energy_descent.png``: a toy tied three-layer HHN, convex vs GELU Lagrangians.
    * ``residuals.png`` (iMixer): fixed-point residual per iteration and block on the first
      ``num_images`` test images, for the trained solver and a converged implicit solve (at
      most ``max_iter`` iterations, tolerance ``tol``).
    * ``sigmas.png`` (iMixer with spectral norm): sigma estimate per block.
    * ``block_energies.png`` and ``block_energy_descent.png`` (tied models): per-block reduced
      energies for one test image.

    Returns the paths written.
    """
    loaded = runs.load_run(workdir)
    model = loaded.model
    c = model.config
    images, _ = runs.eval_images(loaded.config, num_images)
    os.makedirs(out, exist_ok=True)
    written = []

    def save(fig: Figure, name: str) -> None:
        path = os.path.join(out, name)
        fig.savefig(path)
        written.append(path)

    name = os.path.basename(os.path.normpath(workdir))
    metrics_path = os.path.join(workdir, writer.METRICS_FILE)
    if os.path.exists(metrics_path):
        rows = reader.read_jsonl(metrics_path)
        save(plot_training_curves(rows, title=name), "training_curves.png")
    else:
        logging.info("no %s: training_curves.png not written", metrics_path)
    save(plot_energy_descent(toy.toy_energy_curves(jax.random.key(0))), "energy_descent.png")
    iterates = c.token_mixer == "imlp" and c.n_iter > 0
    _, info = blocks.forward(model, images) if iterates or c.tied else (None, None)
    if iterates:
        converged = blocks.with_solver(model, n_iter=max_iter, tol=tol, adjoint="implicit")
        curves = {
            f"trained solver (n_iter {c.n_iter}, {c.adjoint})": blocks.residuals(info),
            f"converged (implicit, tol {tol:g}, at most {max_iter})": blocks.residuals(
                blocks.forward(converged, images)[1]
            ),
        }
        title = f"{name}, step {loaded.step}"
        save(plot_residuals(curves, mark=c.n_iter, title=title), "residuals.png")
    else:
        logging.info("no fixed-point iteration in this model: residuals.png not written")
    sigmas = blocks.block_sigmas(model)
    if sigmas:
        save(plot_sigmas(sigmas, coeff=c.sn_coeff), "sigmas.png")
    if c.tied:
        before, after = blocks.block_energies(info)  # the first image: [:, 0]
        save(plot_block_energies(before[:, 0], after[:, 0]), "block_energies.png")
        descent = blocks.block_energy_descent(model, images[:1])[:, :, 0]
        save(plot_block_energy_descent(descent, step_size=0.1), "block_energy_descent.png")
    else:
        logging.info("untied model: no energy, block energy plots not written")
    return written
