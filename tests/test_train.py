"""Training library and CLI on the embedded digits dataset with a tiny iMixer: outputs (metrics
JSONL, TensorBoard, config.json, checkpoints), evaluation of checkpoints, the NaN guard, the
optimiser pieces (schedule, weight-decay mask, accumulation, EMA) and bfloat16 compute."""

import glob
import json
import logging
import math
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf
from flax import nnx
from tensorboard_events import tensorboard_points

from configs import default
from imixer_jax import evaluate as evaluate_command
from imixer_jax import training
from imixer_jax.training import optim
from imixer_jax.training.logging import reader as metrics
from tests import tiny
from tests.commands import call

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A TFDS data_dir; the pipeline prepares digits into it on first use (about a second)."""
    return str(tmp_path_factory.mktemp("tfds"))


def tiny_config(data_dir, model="imixer_s16", **model_overrides):
    """The default config shrunk to 8 steps of a 1-block, D=16 model."""
    return tiny.trainer_config(data_dir, model, **model_overrides)


@pytest.fixture(scope="module")
def trained_run(data_dir, tmp_path_factory):
    """One finished 8-step run of ``tiny_config``: ``(result, workdir)``. Training it is most of
    a test's time (the train and eval steps compile), and two tests read the same run; each
    works on its own copy (``_copy_run``), since one resumes it and the other damages it."""
    workdir = str(tmp_path_factory.mktemp("trained") / "run")
    return training.train_and_evaluate(tiny_config(data_dir), workdir), workdir


def _copy_run(trained_run, tmp_path) -> tuple[dict, str]:
    """The shared run's result and a private copy of its workdir (as the trainer left it)."""
    result, workdir = trained_run
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)
    return result, copy


def test_train_and_evaluate_writes_metrics_checkpoints_and_resumes(
    data_dir, trained_run, tmp_path, caplog, capsys
):
    config = tiny_config(data_dir)
    result, workdir = _copy_run(trained_run, tmp_path)
    assert result["step"] == 8 and 0 <= result["test/top1"] <= result["test/top5"] <= 1

    rows = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    train_rows = [r for r in rows if "train/loss" in r]
    eval_rows = [r for r in rows if "test/top1" in r]
    assert [r["step"] for r in train_rows] == [2, 4, 6, 8]
    assert [r["step"] for r in eval_rows] == [4, 8]
    for key in ("accuracy", "lr", "grad_norm", "images_per_s", "step_time_s", "eta_s"):
        assert all(math.isfinite(r[f"train/{key}"]) for r in train_rows), key
    sigma_keys = {
        "train/sigma/blocks/0/token_mixer/fc_sn1",
        "train/sigma/blocks/0/token_mixer/fc_sn2",
    }
    assert sigma_keys <= set(train_rows[-1])
    assert train_rows[-1]["train/eta_s"] == 0
    assert eval_rows[-1]["test/top1"] == result["test/top1"]

    tags = set()
    for path in glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    assert {"train/loss", "train/lr", "test/top1", "test/loss"} <= tags

    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["model"]["hidden_dim"] == 16
    # Saved at steps 2, 4, 6 and 8; the newest 2 are kept.
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["6", "8"]

    # Evaluating the newest checkpoint reproduces the final evaluation exactly.
    evaluated = training.evaluate_checkpoint(config, workdir)
    assert evaluated["step"] == 8
    assert evaluated["test/top1"] == result["test/top1"]
    assert evaluated["test/loss"] == pytest.approx(result["test/loss"], rel=1e-6)
    assert training.evaluate_checkpoint(config, workdir, step=6)["step"] == 6
    with pytest.raises(FileNotFoundError, match="step 5"):
        training.evaluate_checkpoint(config, workdir, step=5)
    # The command, without --config, reads the run's config.json.
    capsys.readouterr()
    call(evaluate_command, f"--workdir={workdir}")
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["step"] == 8 and printed["test/top1"] == result["test/top1"]

    # The parameter table is a file; the console gets its summary line.
    table = (pathlib.Path(workdir) / "parameters.txt").read_text().splitlines()
    assert table[0].split() == ["parameter", "shape", "size", "sharding"]
    assert table[-1].startswith("total ") and table[-1].endswith(
        f"parameters in {len(table) - 2} arrays"
    )

    # A finished run restarted says so and returns its logged final metrics: no training, no
    # evaluation, no second row; then it says where everything is.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="absl"):
        again = training.train_and_evaluate(config, workdir)
    assert {k: again[k] for k in result if k.startswith("test/")} == {
        k: v for k, v in result.items() if k.startswith("test/")
    }
    assert metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl")) == rows
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("run complete: all 8 steps trained and evaluated") for m in messages)
    assert not any(m.startswith("step 8  test/") for m in messages)  # no evaluation ran
    (outputs,) = [m for m in messages if m.startswith(f"outputs in {workdir}:")]
    for name in ("config.json", "metrics.jsonl", "tensorboard/", "checkpoints/", "parameters.txt"):
        assert f"\n  {name}" in outputs, name
    assert f"tensorboard --logdir {workdir}/tensorboard" in outputs
    assert f"python -m imixer_jax.evaluate --workdir {workdir}" in outputs


def test_non_finite_values_stop_and_keep_the_last_good_checkpoint(data_dir, tmp_path):
    config, workdir = tiny_config(data_dir), str(tmp_path / "run")
    config.schedule.length, config.schedule.warmup = 30.0, 0.0
    config.optimizer.lr = 1e30  # the first update blows the parameters up to inf/nan
    config.schedule.init_lr = config.schedule.min_lr = 1e30
    config.checkpoint.every_steps, config.log_every_steps = 1, 1
    with pytest.raises(training.TrainingError) as info:
        training.train_and_evaluate(config, workdir)
    message = str(info.value)
    assert "\n" not in message and "non-finite" in message, message
    bad_step = int(message.split(" at step ")[1].split(":")[0])
    saved = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")))
    if not saved:
        assert "no checkpoint had been saved" in message
        return
    assert max(saved) < bad_step and f"(step {max(saved)})" in message
    restored = ocp.StandardCheckpointer().restore(
        os.path.join(workdir, "checkpoints", str(max(saved)), "default")
    )
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored["params"]))


class _FakeCheckpointer:
    directory = "/runs/x/checkpoints"
    waited = False

    def wait(self):
        self.waited = True

    def latest_step(self):
        return 6


@pytest.mark.parametrize(
    "row, named",
    [
        (dict(loss=float("nan"), grad_norm=1.0, params_finite=True), "loss (nan)"),
        (dict(loss=2.0, grad_norm=float("inf"), params_finite=True), "gradient norm (inf)"),
        # Finite loss and gradients, yet the update overflowed: the state must not be saved.
        (dict(loss=2.0, grad_norm=1.0, params_finite=False), "updated parameters"),
    ],
)
def test_guard_names_the_non_finite_value_and_the_kept_checkpoint(row, named):
    from imixer_jax.training.loop import _check_finite

    ckpt = _FakeCheckpointer()
    _check_finite([(6, dict(loss=1.0, grad_norm=1.0, params_finite=True))], ckpt)
    with pytest.raises(training.TrainingError) as info:
        _check_finite([(7, row)], ckpt)
    message = str(info.value)
    assert message.startswith(f"non-finite {named} at step 7: training stopped;"), message
    assert "(step 6) in /runs/x/checkpoints is kept" in message and ckpt.waited


def test_plan_and_schedule_follow_timm():
    config = default.get_config()
    config.batch_size, config.optimizer.lr = 100, 1e-3
    config.schedule.update(unit="epochs", length=10.0, warmup=2.0, cooldown=1.0)
    config.schedule.init_lr, config.schedule.min_lr = 1e-6, 1e-5
    run = optim.plan(config, num_train=1050)  # 10 steps per epoch, remainder dropped
    assert (run.steps_per_epoch, run.total_steps, run.warmup_updates, run.length_updates) == (
        10,
        110,
        20,
        100,
    )
    lr = optim.learning_rate(config, run)

    def close(x):  # float32 schedule: rounding at the ulp of lr = 1e-3 (1.2e-10)
        return pytest.approx(x, rel=1e-6, abs=2e-10)

    assert float(lr(0)) == close(1e-6)
    assert float(lr(10)) == close(1e-6 + (1e-3 - 1e-6) / 2)
    # After the warm-up the cosine counts from t = 0 (timm warmup_prefix=False).
    assert float(lr(20)) == close(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.2)))
    assert float(lr(100)) == close(1e-5) and float(lr(109)) == close(1e-5)

    config.optimizer.accum_steps = 4  # durations stay in data steps; the schedule in updates
    run = optim.plan(config, num_train=1050)
    assert (run.total_steps, run.warmup_updates, run.length_updates) == (108, 5, 25)


def test_weight_decay_skips_one_dimensional_parameters():
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    mask = optim.decay_mask(params)
    assert mask["kernel"].get_value() is True and mask["bias"].get_value() is False
    config = default.get_config()
    config.optimizer.update(lr=0.1, weight_decay=0.5)
    config.schedule.update(unit="steps", length=1.0, warmup=0.0, cooldown=0.0)
    config.schedule.min_lr = 0.1
    tx, _ = optim.create(config, optim.plan(config, num_train=config.batch_size))
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    # With zero gradients only decoupled decay moves a parameter: -lr * wd * p for kernels.
    np.testing.assert_allclose(updates["kernel"][...], -0.05 * params["kernel"][...], rtol=1e-6)
    np.testing.assert_array_equal(updates["bias"][...], 0.0)


def _run_steps(config, batches):
    """Fresh state, then the train step over ``batches`` (numpy dicts); returns the state."""
    run = training.prepare(config)
    state, step = training.init_state(run), training.make_train_step(run.step_settings)
    for batch in batches:
        state, _ = step(state, batch)
    return state


def _batches(n, batch_size, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "image": rng.uniform(-1, 1, (batch_size, 16, 16, 3)).astype(np.float32),
            "label": rng.integers(0, 10, batch_size).astype(np.int32),
        }
        for _ in range(n)
    ]


def _deterministic(config):
    """No randomness in the step: no mixing, smoothing or drop path; MLP token mixer."""
    config.data.augment.label_smoothing = 0.0
    config.model.drop_path_rate = 0.0
    return config


def _half_batches():
    """Two batches of 8 and their concatenation, one batch of 16."""
    (b1, b2) = _batches(2, 8)
    return b1, b2, {k: np.concatenate([b1[k], b2[k]]) for k in b1}


@pytest.fixture(scope="module")
def one_large_step(data_dir):
    """``(params before, state after)`` one train step of the deterministic tiny ``mixer_s16``
    with EMA decay 0.75 on ``_half_batches``' batch of 16. Shared by the accumulation test (its
    one large batch) and the EMA test, so that this train step compiles once; EMA only reads
    the updated parameters, so it changes nothing the accumulation test compares."""
    config = _deterministic(tiny_config(data_dir, "mixer_s16"))
    config.optimizer.ema_decay = 0.75
    run = training.prepare(config)
    state = training.init_state(run)
    before = jax.device_get(state.params)
    state, _ = training.make_train_step(run.step_settings)(state, _half_batches()[2])
    return before, state


def test_gradient_accumulation_equals_one_large_batch(data_dir, one_large_step):
    small = _deterministic(tiny_config(data_dir, "mixer_s16"))
    small.optimizer.accum_steps, small.batch_size = 2, 8
    b1, b2, _ = _half_batches()
    accumulated, direct = _run_steps(small, [b1, b2]), one_large_step[1]
    # The mean of two half-batch mean gradients equals the full-batch mean up to float32
    # rounding (~1e-7 relative); Adam's normalised step turns that into ~1e-7 of lr = 2e-3.
    for a, b in zip(jax.tree.leaves(accumulated.params), jax.tree.leaves(direct.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert int(accumulated.step) == 2 and int(direct.step) == 1


def test_ema_tracks_the_parameters(one_large_step):
    before, state = one_large_step  # EMA decay 0.75, one step
    for ema, p0, p1 in zip(*(jax.tree.leaves(t) for t in (state.ema_params, before, state.params))):
        np.testing.assert_allclose(ema, 0.75 * p0 + 0.25 * p1, rtol=1e-6, atol=1e-7)


def test_bfloat16_compute_keeps_float32_parameters(data_dir):
    config = tiny_config(data_dir, dtype="bfloat16")
    run = training.prepare(config)
    state = training.init_state(run)
    state, metrics_ = training.make_train_step(run.step_settings)(state, _batches(1, 16)[0])
    assert math.isfinite(float(metrics_["loss"])) and bool(metrics_["params_finite"])
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}


def _tiny_flags(data_dir):
    flags = [f"--config.data.data_dir={data_dir}", "--config.batch_size=16"]
    flags += [f"--config.model.{k}={v}" for k, v in tiny.TRAINER.items()]
    flags += ["--config.schedule.unit=steps", "--config.schedule.length=6"]
    flags += ["--config.schedule.warmup=1", "--config.log_every_steps=2"]
    return flags


@pytest.mark.slow
def test_cli_trains_logs_and_evaluates(data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    common = ["--config", "configs/default.py", "--workdir", workdir, *_tiny_flags(data_dir)]
    train = subprocess.run(
        [sys.executable, "-m", "imixer_jax.train", *common],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert "step 2/6  loss" in train.stderr and "ETA" in train.stderr
    assert "final: step 6, test top-1" in train.stderr
    assert "orbax" not in train.stderr  # its INFO chatter is filtered out
    final = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))[-1]

    evaluate = subprocess.run(
        [sys.executable, "-m", "imixer_jax.evaluate", *common],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    result = json.loads(evaluate.stdout.strip().splitlines()[-1])
    assert result["step"] == 6 and result["test/top1"] == final["test/top1"]


def _checkpoint_files(workdir):
    files = sorted(glob.glob(os.path.join(workdir, "checkpoints", "**", "*"), recursive=True))
    return {f: os.path.getsize(f) for f in files if os.path.isfile(f)}


# orbax leaves tensorstore handles of the failed restore to the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_mismatched_or_damaged_checkpoint_fails_with_one_line_and_deletes_nothing(
    data_dir, trained_run, tmp_path
):
    from imixer_jax.training.checkpoint.manager import CheckpointError

    config = tiny_config(data_dir)
    _, workdir = _copy_run(trained_run, tmp_path)
    before = _checkpoint_files(workdir)

    wider = tiny_config(data_dir, hidden_dim=24)  # another model: shapes do not fit
    with pytest.raises(CheckpointError, match="does not fit this config") as info:
        training.evaluate_checkpoint(wider, workdir, None)
    assert "\n" not in str(info.value)
    assert _checkpoint_files(workdir) == before

    # Damage the newest checkpoint's array data: restoring it must fail as damaged.
    newest = max(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
    data_files = [
        f for f in before if f"/checkpoints/{newest}/" in f and "/d/" in f and os.path.getsize(f)
    ]
    assert data_files, sorted(before)
    for f in data_files:
        with open(f, "r+b") as handle:
            handle.truncate(1)
    with pytest.raises(CheckpointError, match="damaged"):
        training.evaluate_checkpoint(config, workdir, newest)
    # Without a step, evaluation takes the newest intact checkpoint and moves nothing.
    assert training.evaluate_checkpoint(config, workdir)["step"] == newest - 2
    assert set(_checkpoint_files(workdir)) == set(before)


def test_parameter_overview_lists_every_array_and_the_total():
    from imixer_jax.training.summary import parameter_overview

    params = nnx.state(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), nnx.Param)
    lines = parameter_overview(params).splitlines()
    assert lines[0].split() == ["parameter", "shape", "size", "sharding"]
    assert [line.split()[:3] for line in lines[1:3]] == [
        ["bias", "(2,)", "2"],
        ["kernel", "(3,", "2)"],
    ]
    assert lines[-1] == "total 8 parameters in 2 arrays"


def test_progress_leaves_out_what_it_did_not_time(monkeypatch):
    from imixer_jax.training import progress as progress_lib

    now = [100.0]
    monkeypatch.setattr(progress_lib.time, "time", lambda: now[0])
    progress = progress_lib.Progress(total=20, batch_size=8)
    now[0] = 160.0  # the compiling first step: the loop restarts the clock after it
    progress.restart()
    assert progress.report(1) == {}  # nothing timed yet: no rate, no ETA
    progress.data_wait(0.5)
    progress.step()
    progress.step()
    now[0] = 167.0
    progress.exclude(3.0)  # a checkpoint save
    assert progress.report(10) == {
        "train/images_per_s": 4.0,
        "train/step_time_s": 2.0,
        "train/data_wait_s": 0.25,
        "train/eta_s": 20.0,
    }


def test_resumed_writer_replaces_the_replayed_steps_in_metrics_and_tensorboard(tmp_path):
    from imixer_jax.training.logging.writer import MetricWriter

    workdir = str(tmp_path)
    first = MetricWriter(workdir)
    first.write_text("config", "a", step=1)
    for step in range(1, 6):  # killed after step 5, its last checkpoint at step 2
        first.write(step, {"train/loss": float(step)})
    first.close()
    resumed = MetricWriter(workdir, resume_step=2)
    resumed.write_text("config", "b", step=3)
    for step in range(3, 7):
        resumed.write(step, {"train/loss": 10.0 * step})
    resumed.close()
    want = [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0), (5, 50.0), (6, 60.0)]
    rows = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert [(r["step"], r["train/loss"]) for r in rows] == want
    shown = tensorboard_points(workdir)
    assert shown["train/loss"] == want  # each step once, the resumed run's values
    assert shown["config"] == [(1, "    a"), (3, "    b")]  # the config from each start on
