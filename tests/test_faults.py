"""Fault injection: what a run survives. A tiny iMixer on the embedded digits; the runs that must
be interrupted from outside (signals, SIGKILL during a save, a full disk) are trainer processes
started by the entry point, the rest run in this process on copies of one trained workdir.

What each fault must leave:
* byte flipped / file truncated / file missing in the newest checkpoint: one warning line, resume
  from the newest intact one (the damaged one moved to DIR/damaged_checkpoints, nothing deleted),
  ending bit-identical to an undisturbed run;
* a second trainer on the same workdir: a one-line refusal, nothing touched;
* SIGKILL during a save: the lock is free again, the newest complete checkpoint restores;
* SIGTERM / SIGINT: the current step saved, one line, exit status 0;
* a full disk (file-size limit): one line, exit status 1, the previous checkpoint and a valid
  metrics.jsonl kept;
* a resume that the config does not fit: one line, config.json untouched;
* every checkpoint damaged: one line, nothing moved, no silent restart from step 0;
* a resume with a changed setting: one line naming the keys unless they are allowed (recorded);
* a symbolic link among the trainer's files: one line naming it, nothing written through it;
* a signal between two logs: the resumed run's metrics equal the uninterrupted run's;
* a disk filled during a run (a real 1 MiB filesystem): one line naming cause, path and fix.
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import jax
import numpy as np
import pytest

from imixer_jax import training
from imixer_jax.training import checkpoint
from imixer_jax.training.checkpoint.lock import WorkdirBusyError, WorkdirLock
from imixer_jax.training.logging import reader as metrics
from tests import tiny

# orbax leaves the tensorstore reads of a damaged checkpoint to the garbage collector.
pytestmark = [
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.slow,  # subprocesses and real signals
]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = tiny.TRAINER
STEPS, EVERY = 4, 2

CONFIG = """
from configs import default
from imixer_jax.training import config as config_lib


def get_config():
    c = default.get_config()
    c.model = config_lib.model_section("imixer_s16", num_classes=10, **{tiny})
    c.data.data_dir = {data_dir!r}
    c.batch_size, c.eval_batch_size = 16, 360
    c.schedule.update(unit="steps", length={steps}.0, warmup=1.0)
    c.checkpoint.every_steps, c.checkpoint.keep = {every}, 3
    c.log_every_steps, c.eval_every_steps = 1, 0
    return c
"""


def tiny_config(data_dir, steps=STEPS, every=EVERY):
    return tiny.trainer_config(
        data_dir,
        steps=steps,
        warmup=1.0,
        eval_batch_size=360,
        log_every=1,
        eval_every=0,
        checkpoint_every=every,
        keep=3,
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from imixer_jax import data

    path = str(tmp_path_factory.mktemp("tfds"))
    data.dataset_info("digits", data_dir=path)  # prepared once, before any subprocess starts
    return path


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """A finished run (checkpoints 2 and 4) and its final parameters."""
    workdir = str(tmp_path_factory.mktemp("trained") / "run")
    result = training.train_and_evaluate(tiny_config(data_dir), workdir)
    return workdir, result


def _copy(workdir, tmp_path):
    target = str(tmp_path / "run")
    shutil.copytree(workdir, target)
    return target


def _params(config, workdir, step=None):
    state = training.restore_state(training.prepare(config), workdir, step)
    return jax.device_get(jax.tree.leaves(state.params))


def _files(workdir):
    out = {}
    for path in sorted(glob.glob(os.path.join(workdir, "**", "*"), recursive=True)):
        if os.path.isfile(path) and not path.endswith("/lock"):
            with open(path, "rb") as f:
                out[os.path.relpath(path, workdir)] = f.read()
    return out


def _flip_byte(workdir, step):
    data_files = glob.glob(os.path.join(workdir, "checkpoints", str(step), "default", "d", "*"))
    path = max(data_files, key=os.path.getsize)
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))


def test_flipped_byte_in_newest_checkpoint_resumes_from_the_previous_one(
    data_dir, trained, tmp_path, caplog
):
    source, result = trained
    config, workdir = tiny_config(data_dir), _copy(source, tmp_path)
    want = _params(config, source)
    _flip_byte(workdir, STEPS)
    again = training.train_and_evaluate(config, workdir)
    warnings = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert f"checkpoint {STEPS} " in warnings[0] and "damaged_checkpoints" in warnings[0]
    # Nothing deleted: the damaged checkpoint was moved aside, step 4 trained again.
    assert os.path.isdir(os.path.join(workdir, "damaged_checkpoints", str(STEPS), "default"))
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
    # Steps 3-4 replayed from checkpoint 2: the same keys and batches give the same bits.
    for a, b in zip(_params(config, workdir), want, strict=True):
        np.testing.assert_array_equal(a, b)
    assert again["test/top1"] == result["test/top1"]
    # One row per step: the replayed steps replaced the rows of the first run.
    steps = [r["step"] for r in metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))]
    assert steps == [1, 2, 3, 4, 4], steps  # step 4: a train row and the evaluation


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_damaged_newest_checkpoint_is_skipped_by_a_read(data_dir, trained, tmp_path, damage):
    source, _ = trained
    config, workdir = tiny_config(data_dir), _copy(source, tmp_path)
    newest = os.path.join(workdir, "checkpoints", str(STEPS), "default")
    if damage == "truncated":
        for path in glob.glob(os.path.join(newest, "d", "*")):
            os.truncate(path, os.path.getsize(path) // 2)
    else:
        os.remove(os.path.join(newest, "_METADATA"))
    before = _files(workdir)
    with pytest.raises(checkpoint.DamagedCheckpointError, match="is damaged") as info:
        training.restore_state(training.prepare(config), workdir, STEPS)
    assert "\n" not in str(info.value)
    # Without a step, a read falls back to the newest intact checkpoint and moves nothing.
    got = _params(config, workdir)
    for a, b in zip(got, _params(config, source, EVERY), strict=True):
        np.testing.assert_array_equal(a, b)
    assert _files(workdir) == before


def test_second_trainer_is_refused_and_touches_nothing(data_dir, trained, tmp_path):
    source, _ = trained
    workdir = _copy(source, tmp_path)
    before = _files(workdir)
    other = tiny_config(data_dir)
    other.seed = 1
    busy = pytest.raises(WorkdirBusyError, match="is in use by another trainer")
    with WorkdirLock(workdir), busy as info:  # the lock: a first trainer, still running
        training.train_and_evaluate(other, workdir)
    message = str(info.value)
    assert "\n" not in message and f"pid {os.getpid()}" in message
    assert _files(workdir) == before


def test_rejected_resume_keeps_config_json(data_dir, trained, tmp_path):
    source, _ = trained
    workdir = _copy(source, tmp_path)
    before = _files(workdir)
    wider = tiny_config(data_dir)
    wider.model.hidden_dim = 24
    with pytest.raises(checkpoint.CheckpointError, match="does not fit") as info:
        training.train_and_evaluate(wider, workdir)
    assert "\n" not in str(info.value) and "config.json" in str(info.value)
    assert _files(workdir) == before


def test_cut_metrics_row_is_dropped_on_read_and_on_resume(data_dir, trained, tmp_path):
    source, _ = trained
    workdir = _copy(source, tmp_path)
    path = os.path.join(workdir, "metrics.jsonl")
    rows = metrics.read_jsonl(path)
    with open(path, "a") as f:
        f.write('{"step": 5, "train/lo')  # a write cut by a kill or a full disk
    assert metrics.read_jsonl(path) == rows
    training.train_and_evaluate(tiny_config(data_dir), workdir)  # finished: evaluates only
    with open(path) as f:
        assert f.read().endswith("}\n")
    assert metrics.read_jsonl(path) == rows  # no second row for the same evaluation


def _damage_all(workdir):
    for path in glob.glob(os.path.join(workdir, "checkpoints", "*", "default", "d", "*")):
        os.truncate(path, os.path.getsize(path) // 2)


def test_all_damaged_checkpoints_are_never_restarted_from_scratch_silently(
    data_dir, trained, tmp_path
):
    source, _ = trained
    config, workdir = tiny_config(data_dir), _copy(source, tmp_path)
    _damage_all(workdir)
    before = _files(workdir)
    for _ in range(2):  # rerunning the same command: refused again, not a fresh run
        with pytest.raises(checkpoint.CheckpointError, match="every checkpoint") as info:
            training.train_and_evaluate(config, workdir)
        assert "\n" not in str(info.value) and "--restart_damaged" in str(info.value)
        assert _files(workdir) == before  # nothing moved, metrics.jsonl not cut
    # A workdir whose damaged checkpoints were set aside earlier (checkpoints/ empty) too.
    aside = os.path.join(workdir, checkpoint.DAMAGED_DIR)
    shutil.move(os.path.join(workdir, "checkpoints"), aside)
    os.makedirs(os.path.join(workdir, "checkpoints"))
    with pytest.raises(checkpoint.CheckpointError, match="--restart_damaged"):
        training.train_and_evaluate(config, workdir)
    rows = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    # Asked for: step 0 again, the old metrics kept beside the damaged checkpoints.
    training.train_and_evaluate(config, workdir, restart_damaged=True)
    assert metrics.read_jsonl(os.path.join(aside, "metrics.jsonl")) == rows
    for a, b in zip(_params(config, workdir), _params(config, source), strict=True):
        np.testing.assert_array_equal(a, b)
    with open(os.path.join(workdir, "config_history.jsonl")) as f:
        assert json.loads(f.readlines()[-1])["reason"].startswith("restart")


def test_resume_with_a_changed_setting_is_refused_unless_allowed(data_dir, trained, tmp_path):
    source, _ = trained
    workdir = _copy(source, tmp_path)
    before = _files(workdir)
    reseeded = tiny_config(data_dir)
    before_lr = reseeded.optimizer.lr
    reseeded.seed = 1
    reseeded.optimizer.lr = 1e-3
    with pytest.raises(training.ConfigChangedError) as info:
        training.train_and_evaluate(reseeded, workdir)
    line = str(info.value)
    assert "\n" not in line and len(line) < 300, line
    assert "optimizer.lr,seed" in line and "--allow_config_change=optimizer.lr,seed" in line
    assert _files(workdir) == before
    with pytest.raises(training.ConfigChangedError, match="seed"):  # both must be allowed
        training.train_and_evaluate(reseeded, workdir, allow_config_change=["optimizer"])
    # Reporting and hardware settings may change freely; allowed changes are recorded.
    reseeded.log_every_steps, reseeded.checkpoint.keep = 2, 1
    training.train_and_evaluate(reseeded, workdir, allow_config_change=["optimizer", "seed"])
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["seed"] == 1
    with open(os.path.join(workdir, "config_history.jsonl")) as f:
        history = [json.loads(line) for line in f]
    assert history[-1]["changed"] == {"optimizer.lr": [before_lr, 1e-3], "seed": [0, 1]}
    assert history[-1]["step"] == STEPS and history[-2]["config"]["seed"] == 0


@pytest.mark.parametrize(
    "name", ["lock", "metrics.jsonl", "config.json", "tensorboard", "damaged_checkpoints"]
)
def test_nothing_is_written_through_a_symbolic_link(data_dir, trained, tmp_path, name):
    source, _ = trained
    workdir = _copy(source, tmp_path)
    _flip_byte(workdir, STEPS)  # a resume would move checkpoint 4 to damaged_checkpoints/
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "target"
    path = os.path.join(workdir, name)
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)
    if name in ("tensorboard", "damaged_checkpoints"):
        target.mkdir()
    else:
        target.write_text("someone else's file\n")
    os.symlink(target, path)
    with pytest.raises(training.TrainingError, match="is a symbolic link") as info:
        training.train_and_evaluate(tiny_config(data_dir), workdir)
    assert str(info.value).startswith(f"{path} is a symbolic link") and "\n" not in str(info.value)
    assert sorted(os.listdir(outside)) == ["target"]
    if target.is_file():
        assert target.read_text() == "someone else's file\n"
    else:
        assert os.listdir(target) == []
    # A link made after that check is not followed either (O_NOFOLLOW).
    if name in ("lock", "metrics.jsonl"):
        from imixer_jax.training import workdir as workdir_lib

        with pytest.raises(training.TrainingError, match="is a symbolic link"):
            if name == "lock":
                WorkdirLock(workdir).__enter__()
            else:
                os.close(workdir_lib.open_for_writing(path, os.O_APPEND))
        assert target.read_text() == "someone else's file\n"


def _train_rows(workdir):
    """The train rows of metrics.jsonl without the timings (which no two runs share)."""
    rows = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    return [
        {k: v for k, v in r.items() if not k.endswith(("_s", "_per_s"))}
        for r in rows
        if "train/loss" in r
    ]


def test_resume_between_logs_repeats_the_uninterrupted_metrics(data_dir, trained, tmp_path):
    """Logs at steps 3 and 4, checkpoints at 2 and 4: resumed from checkpoint 2, step 3's row
    must average steps 1-3, as the uninterrupted run's does (steps 1-2 carried by the
    checkpoint)."""
    config = tiny_config(data_dir)
    config.log_every_steps = 3
    whole = str(tmp_path / "whole")
    training.train_and_evaluate(config, whole)  # the programs of ``trained``: no compilation
    resumed = str(tmp_path / "resumed")
    shutil.copytree(whole, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", str(STEPS)))
    training.train_and_evaluate(config, resumed)
    assert [r["step"] for r in _train_rows(whole)] == [3, 4]
    assert _train_rows(resumed) == _train_rows(whole)


# Trainer processes, started as a user would.


def _config_file(tmp_path, data_dir, steps, every):
    path = tmp_path / "tiny.py"
    text = CONFIG.format(tiny=TINY, data_dir=data_dir, steps=steps, every=every)
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
    """The trainer processes compile the same programs: share them through JAX's cache. This
    module's own, not the suite's (conftest's ``jax_cache``): its processes are killed and run
    under file-size limits, and must not leave anything in a cache other tests read."""
    return str(tmp_path_factory.mktemp("jax_cache"))


def _trainer(config_path, workdir, jax_cache, file_size_limit=None, flags=(), read_only=False):
    """A trainer process; ``read_only``: it reads compiled programs from ``jax_cache`` but never
    writes one (no program compiles for 1e9 s), so a write cannot fail under a file-size limit."""
    command = [sys.executable, "-m", "imixer_jax.train", "--config", config_path]
    command += ["--workdir", workdir, *flags]
    if file_size_limit is not None:  # in 1 KiB blocks; past it writes fail with EFBIG
        command = ["bash", "-c", f'ulimit -f {file_size_limit}; trap "" XFSZ; exec "$@"', "-"]
        command += [sys.executable, "-m", "imixer_jax.train", "--config", config_path]
        command += ["--workdir", workdir, *flags]
    env = dict(os.environ)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the suite's cache (tests/conftest.py) too
    if jax_cache is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = jax_cache
    if read_only:
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "1e9"
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _logged_steps(workdir):
    try:
        return [r["step"] for r in metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))]
    except FileNotFoundError:
        return []


def _wait_for(condition, process, timeout=600):  # generous: a loaded machine compiles slowly
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None and not condition():
        time.sleep(0.01)
    assert process.poll() is None, process.communicate()[1][-3000:]
    assert condition(), "timed out"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_and_exits_cleanly(data_dir, jax_cache, tmp_path, sig):
    config_path = _config_file(tmp_path, data_dir, steps=1000, every=0)
    workdir = str(tmp_path / "run")
    trainer = _trainer(config_path, workdir, jax_cache)
    _wait_for(lambda: len(_logged_steps(workdir)) >= 3, trainer)
    trainer.send_signal(sig)
    _, err = trainer.communicate(timeout=600)
    assert trainer.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if f"{sig.name}: saved the checkpoint" in line]
    assert len(lines) == 1, err[-3000:]
    saved = int(lines[0].split("of step ")[1].split()[0])
    assert saved >= 3 and os.listdir(os.path.join(workdir, "checkpoints")) == [str(saved)]
    assert max(_logged_steps(workdir)) <= saved


def test_sigkill_during_a_save_leaves_a_restorable_workdir(data_dir, jax_cache, tmp_path):
    config_path = _config_file(tmp_path, data_dir, steps=1000, every=1)
    workdir = str(tmp_path / "run")
    trainer = _trainer(config_path, workdir, jax_cache)

    def saving():  # a save in progress after at least two complete ones
        names = os.listdir(os.path.join(workdir, "checkpoints"))
        return sum(n.isdigit() for n in names) >= 2 and any("tmp" in n for n in names)

    _wait_for(lambda: os.path.isdir(os.path.join(workdir, "checkpoints")) and saving(), trainer)
    trainer.send_signal(signal.SIGKILL)
    trainer.communicate()
    with WorkdirLock(workdir):  # the kernel released the dead trainer's lock
        pass
    config = tiny_config(data_dir, steps=1000, every=1)
    complete = max(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())
    state = training.restore_state(training.prepare(config), workdir)
    assert int(state.step) == complete


def test_full_disk_stops_with_one_line_and_keeps_checkpoint_and_metrics(
    data_dir, trained, jax_cache, tmp_path
):
    source, _ = trained
    # 1000 steps as in the signal tests: the same programs, read from their JAX cache (the run
    # stops at its first save, step 4, whatever the length).
    config_path = _config_file(tmp_path, data_dir, steps=1000, every=2)
    workdir = _copy(source, tmp_path)
    shutil.rmtree(os.path.join(workdir, "checkpoints", str(STEPS)))  # resume from step 2
    # Room for the metrics and event files, not for a checkpoint's metadata file.
    limit_kib = 16
    metadata = os.path.join(workdir, "checkpoints", "2", "default", "_METADATA")
    assert os.path.getsize(metadata) > limit_kib * 1024
    # --verbosity=-1: the trainer's INFO progress lines off, every warning and error kept. The
    # JAX cache read-only: writing an entry would fail too (JAX's warning about a full cache).
    # The 4-step run resumed as a 1000-step one: a schedule change, allowed explicitly.
    flags = ["--verbosity=-1", "--allow_config_change=schedule.length"]
    trainer = _trainer(
        config_path, workdir, jax_cache, file_size_limit=limit_kib, flags=flags, read_only=True
    )
    _, err = trainer.communicate(timeout=600)
    assert trainer.returncode == 1, err[-3000:]
    # Exactly one line: orbax logs the failed save from each of its threads (with TensorStore's
    # spec, some after the trainer's line); the trainer reports it once and drops those.
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "failed" in lines[0], err[-3000:]
    assert "checkpoint 2 is kept" in lines[0] or "metrics.jsonl" in lines[0], lines
    assert "File too large" in lines[0], lines  # the cause, before TensorStore's long spec
    config = tiny_config(data_dir, steps=1000)
    assert int(training.restore_state(training.prepare(config), workdir).step) == 2
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        text = f.read()
    assert text.endswith("\n") and all(json.loads(line) for line in text.splitlines())


def test_workdir_that_is_a_file_fails_with_one_line(tmp_path):
    path = tmp_path / "run"
    path.write_text("not a directory")
    with pytest.raises(training.TrainingError, match="cannot use .* as the workdir") as info:
        WorkdirLock(str(path)).__enter__()
    assert "\n" not in str(info.value)


def test_reading_a_missing_workdir_creates_nothing(data_dir, tmp_path):
    workdir = tmp_path / "no" / "such" / "run"
    with pytest.raises(FileNotFoundError, match="no checkpoint directory") as info:
        training.evaluate_checkpoint(tiny_config(data_dir), str(workdir))
    assert "\n" not in str(info.value) and not (tmp_path / "no").exists()


def _signal_once_logged(workdir, step, sig):
    """A thread that sends ``sig`` to this process (the trainer's loop runs in it) once
    ``workdir/metrics.jsonl`` has a row of ``step`` or later."""

    def watch():
        while not any(s >= step for s in _logged_steps(workdir)):
            time.sleep(0.01)
        os.kill(os.getpid(), sig)

    threading.Thread(target=watch, daemon=True).start()


def test_signal_between_logs_resumes_with_the_uninterrupted_metrics(data_dir, tmp_path):
    """Logs every 5 steps; Ctrl-C after the row of step 5 stops the run at step 6-9. The resumed
    run's row of step 10 must average steps 6-10, as the uninterrupted run's does: the stopped
    run's unlogged steps travel in its checkpoint."""
    config = tiny_config(data_dir, steps=1000, every=0)
    config.log_every_steps = 5
    whole, stopped = str(tmp_path / "whole"), str(tmp_path / "stopped")
    _signal_once_logged(whole, 10, signal.SIGTERM)
    assert training.train_and_evaluate(config, whole)["preempted"]
    _signal_once_logged(stopped, 5, signal.SIGINT)
    assert training.train_and_evaluate(config, stopped)["step"] >= 6
    _signal_once_logged(stopped, 10, signal.SIGTERM)
    training.train_and_evaluate(config, stopped)
    want = [r for r in _train_rows(whole) if r["step"] <= 10]
    assert [r["step"] for r in want] == [5, 10]
    assert [r for r in _train_rows(stopped) if r["step"] <= 10] == want


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB filesystem (tmpfs; mounting one needs root)."""
    path = tmp_path / "small_disk"
    path.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)]
    if subprocess.run(mount, capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    yield str(path)
    subprocess.run(["umount", "-l", str(path)], check=True)


def _fill(directory):
    fd = os.open(os.path.join(directory, "filler"), os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, bytes(1 << 16))
    except OSError:
        pass
    finally:
        os.close(fd)


def test_disk_filled_during_a_run_stops_it_with_one_line(data_dir, jax_cache, tmp_path, small_disk):
    """Whatever write fails first (metrics, TensorBoard, a checkpoint), the line names the
    cause, the path and the fix; the checkpointer's close, failing on the same full disk, does
    not replace it, and no orbax line precedes it."""
    config_path = _config_file(tmp_path, data_dir, steps=1000, every=2)
    workdir = os.path.join(small_disk, "run")
    trainer = _trainer(config_path, workdir, jax_cache, flags=["--verbosity=-1"])
    _wait_for(lambda: os.path.isdir(os.path.join(workdir, "checkpoints", "2")), trainer)
    _fill(small_disk)
    _, err = trainer.communicate(timeout=600)
    assert trainer.returncode == 1, err[-3000:]
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    assert "No space left on device" in lines[0] and workdir in lines[0], lines[0]
    assert "free disk space" in lines[0].lower() and len(lines[0]) < 300, lines[0]
