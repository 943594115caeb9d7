"""imixer_jax.analysis (energy descent, residuals, per-block energies) and the
``python -m imixer_jax.analyze`` command on a tiny trained workdir."""

import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
from flax import nnx

from configs import default
from imixer_jax import analysis, training
from imixer_jax.analysis import toy
from imixer_jax.models.configs import MixerConfig
from imixer_jax.models.mixer import Mixer
from imixer_jax.training import checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tiny_config(*, tied: bool, steps: int):
    config = default.get_config()
    config.model.tied = tied
    config.model.num_blocks = 2
    config.model.hidden_dim = 16
    config.model.tokens_mlp_dim = 8
    config.model.channels_mlp_dim = 32
    config.schedule.unit = "steps"
    config.schedule.length = float(steps)
    config.schedule.warmup = 2.0
    config.eval_every_steps = 0
    config.checkpoint.every_steps = 0
    config.log_every_steps = steps
    return config


@pytest.fixture(scope="module")
def tied_workdir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("tied"))
    training.train_and_evaluate(_tiny_config(tied=True, steps=20), workdir)
    return workdir


# ---------------------------------------------------------------------------------------------
# Toy network: what the notebook claims about convex and GELU Lagrangians.


def test_toy_energy_descent_convex_never_rises_gelu_can():
    # Reported flaky once (issue 9, item 13). Cause: JAX 0.10 treedefs of ReLU() and GELU() compared
    # equal, so jit could run the ReLU network's program on a GELU one (see hopfield.pytree). Before
    # that was found: it is deterministic: explicit keys, no global
    # state; its energies and rates are bit-identical (one SHA-256) with XLA's Eigen thread pool
    # off, on one core, with 8 host devices, with one OpenBLAS thread, after the tests that
    # switch float64 on (Lagrangians, solver) in the same process, and at a load of 9-14 on 2
    # cores (two pytest processes at once pass too). Its margins are far from float32 rounding:
    # the largest ReLU rate is -1.5e-7 of the trajectory's largest |dE/dt| (threshold +1e-5),
    # the largest GELU-0 one -8.4e-4; GELU at biases -2 rises on 5.8% of the states (max rate
    # +0.46); every energy drops by >= 38 (threshold 1). The messages below print these numbers,
    # so a failure shows which claim broke and by how much.
    curves = analysis.toy_energy_curves(jax.random.key(0), dt=0.01, num_steps=600)
    relu, gelu_0, gelu_neg = (curves[label].rising() for label in analysis.TOY_NETWORKS)
    # Convex Lagrangians: dE/dt <= 0 at every visited state (up to float32 rounding, see rising).
    assert relu["fraction"] == 0.0 and relu["total_rise"] == 0.0, relu
    assert gelu_0["fraction"] == 0.0, gelu_0
    # GELU with neurons pushed onto its falling branch: the exact rate is positive somewhere.
    assert gelu_neg["fraction"] > 0.0 and gelu_neg["max_rate"] > 0.0, gelu_neg
    for label, descent in curves.items():  # every trajectory still ends far below its start
        drop = descent.energies[0] - descent.energies[-1]
        assert np.all(drop > 1.0), (label, drop)


def test_energy_rate_matches_finite_differences_of_the_energy():
    net = analysis.three_layer_network(jax.random.key(1), hidden=("relu", "relu"))
    descent = analysis.energy_descent(net, jax.random.key(2), batch=2, dt=1e-3, num_steps=20)
    # Forward differences of E along an Euler path with dt = 1e-3 match dE/dt to O(dt) relative.
    fd = np.diff(descent.energies, axis=0) / descent.dt
    np.testing.assert_allclose(fd[:5], descent.rates[:5], rtol=2e-2)


def test_energy_descent_in_chunks_is_one_long_scan():
    # energy_descent runs its steps in scans of toy.CHUNK steps (one compiled scan for every dt
    # and num_steps); each scan continues from the last state, so the trajectory is the one long
    # scan's, bit for bit.
    net = analysis.three_layer_network(jax.random.key(1), bias_mean=-2.0)
    num_steps = 2 * toy.CHUNK + 7
    descent = analysis.energy_descent(net, jax.random.key(2), batch=3, num_steps=num_steps)
    xs0 = toy._initial_states(jax.random.key(2), ((16,), (24,), (12,)), 3, 2.0)
    energies, states, _ = net.descend(xs0, dt=0.01, num_steps=num_steps, return_states=True)
    np.testing.assert_array_equal(descent.energies, energies)
    np.testing.assert_array_equal(descent.rates, toy._energy_rates(net, states))


def test_energy_increases_counts_only_rises_beyond_rounding():
    energies = np.array([3.0, 2.0, 2.0 + 1e-7, 2.5, 1.0])
    stats = analysis.energy_increases(energies)
    assert stats == {"fraction": 0.25, "total_rise": pytest.approx(0.5, abs=1e-6)}


# ---------------------------------------------------------------------------------------------
# Models.


def _config(**overrides) -> MixerConfig:
    return MixerConfig(**{**_tiny_config(tied=False, steps=1).model.to_dict(), **overrides})


def test_with_solver_keeps_the_weights_and_changes_only_the_solver():
    config = _config()
    model = Mixer(config, rngs=nnx.Rngs(params=0))
    model.eval()
    images = jax.random.uniform(jax.random.key(0), (4, 16, 16, 3), minval=-1, maxval=1)
    logits, info = analysis.forward(model, images)
    same, _ = analysis.forward(analysis.with_solver(model), images)
    np.testing.assert_array_equal(same, logits)
    analysis.settle_spectral_norm(model, images)  # sigma estimates as after a training step
    converged = analysis.with_solver(model, n_iter=100, tol=1e-5, adjoint="implicit")
    _, info_conv = analysis.forward(converged, images)
    res = analysis.residuals(info_conv)
    assert res.shape == (2, 100)
    for i, r in enumerate(res):  # stopped early at the tolerance (convergence checked, not assumed)
        steps = int(info_conv[f"block_{i}"]["steps"])
        assert steps < 100 and r[steps - 1] <= 1e-5 and np.all(np.isnan(r[steps:]))
    assert analysis.residuals(info).shape == (2, config.n_iter)
    with pytest.raises(ValueError, match="with_solver changes only"):
        analysis.with_solver(model, tied=True)
    with pytest.raises(ValueError, match="tied"):
        analysis.block_energies(info)
    assert set(analysis.block_sigmas(model)) == {"fc_sn1", "fc_sn2"}


def test_block_inputs_reproduce_the_forward_pass():
    model = Mixer(_config(token_mixer="mlp"), rngs=nnx.Rngs(params=0))
    model.eval()
    images = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3), minval=-1, maxval=1)
    inputs = analysis.block_inputs(model, images)
    out = model.blocks[-1](inputs[-1])
    # Same ops in the same order as Mixer.__call__: equal up to float32 rounding of the head.
    chex.assert_trees_all_close(
        model.head(model.norm(out).mean(axis=1)), model(images), atol=1e-6, rtol=1e-6
    )


@pytest.mark.slow
def test_load_run_and_tied_energies(tied_workdir):
    loaded = analysis.load_run(tied_workdir)
    assert loaded.step == 20 and loaded.model.config.tied
    images, labels = analysis.eval_images(loaded.config, 5)
    assert images.shape == (5, 16, 16, 3) and labels.shape == (5,)
    before, after = analysis.block_energies(analysis.forward(loaded.model, images)[1])
    assert before.shape == after.shape == (2, 5)
    descent = analysis.block_energy_descent(loaded.model, images[:2], num_steps=10)
    assert descent.shape == (2, 11, 2) and np.all(np.isfinite(descent))

    fresh = analysis.fresh_like(loaded.model, seed=1)
    placement = jax.tree.map(lambda x: x.sharding, nnx.state(loaded.model))
    assert jax.tree.map(lambda x: x.sharding, nnx.state(fresh)) == placement  # on the run's mesh
    # The official initialisation from seed 1, drawn in one compiled program rather than eagerly:
    # the same draws, equal up to float32 rounding of the samplers (a few ulp).
    eager = Mixer(loaded.model.config, rngs=nnx.Rngs(params=1))
    chex.assert_trees_all_close(nnx.state(fresh), nnx.state(eager), rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_analyze_command_writes_the_pngs(tied_workdir, tmp_path):
    out = tmp_path / "plots"
    subprocess.run(
        [sys.executable, "-m", "imixer_jax.analyze", "--workdir", tied_workdir, "--out", str(out)],
        check=True,
        cwd=REPO,
        timeout=300,
    )
    expected = {
        "training_curves.png",
        "energy_descent.png",
        "residuals.png",
        "sigmas.png",
        "block_energies.png",
        "block_energy_descent.png",
    }
    assert set(os.listdir(out)) == expected
    for name in expected:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


def test_training_curves_plot_the_logged_metrics():
    rows = [  # metrics.jsonl rows: train rows, evaluation rows, a non-finite loss as a string
        {"step": 2, "train/loss": 2.0},
        {"step": 4, "train/loss": 1.5},
        {"step": 4, "test/top1": 0.5, "test/loss": 1.0},
        {"step": 6, "train/loss": "nan"},
        {"step": 8, "test/top1": 0.75},
    ]
    loss_ax, top1_ax = analysis.plot_training_curves(rows, title="run").axes
    (loss,) = loss_ax.get_lines()
    np.testing.assert_array_equal(loss.get_xdata(), [2, 4])
    np.testing.assert_array_equal(loss.get_ydata(), [2.0, 1.5])
    (top1,) = top1_ax.get_lines()
    np.testing.assert_array_equal(top1.get_xdata(), [4, 8])
    np.testing.assert_array_equal(top1.get_ydata(), [50.0, 75.0])  # percent


def _untrained_workdir(workdir: str) -> None:
    """The workdir of a tied run as the trainer leaves it at a save, without the training:
    ``config.json`` and the checkpoint (step 0) of the fresh train state, both as the trainer
    writes them. Training would add ~25 s of CPU time (the train step compiles) and nothing
    the fit check reads: it compares the saved shapes with the config's before any value."""
    setup = training.prepare(_tiny_config(tied=True, steps=20))
    ckpt = checkpoint.Checkpointer(workdir, every_steps=1)
    ckpt.save(0, training.init_state(setup))
    ckpt.wait()
    ckpt.close()
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(setup.config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
    assert analysis.has_checkpoint(workdir)  # what the command checks before loading the run


def test_analyze_command_on_a_checkpoint_that_does_not_fit_is_one_line(tmp_path):
    workdir = tmp_path / "run"
    _untrained_workdir(str(workdir))
    config = json.loads((workdir / "config.json").read_text())
    config["model"]["hidden_dim"] = 24  # another model: the checkpoint's shapes do not fit
    (workdir / "config.json").write_text(json.dumps(config))
    out = tmp_path / "plots"
    result = subprocess.run(
        [sys.executable, "-m", "imixer_jax.analyze", "--workdir", str(workdir), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "checkpoint" in lines[0] and "; " in lines[0]
    assert "does not fit" in lines[0]  # the fit check, not a missing checkpoint
    assert not out.exists()  # nothing written before the run loaded
