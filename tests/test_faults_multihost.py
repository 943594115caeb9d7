"""Preemption of a 2-process ``jax.distributed`` run (CPU collectives: gloo), started with the
trainer's entry point as a cluster would: SIGTERM (or Ctrl-C) reaches ONE process; both must save
the same step (JAX's preemption sync point, through orbax), print one line each and exit 0, and a
resumed run continues from the saved step.
"""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from imixer_jax import data
from imixer_jax.training.logging import reader as metrics

pytestmark = pytest.mark.slow  # two 2-process runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Long enough that a stop requested after step 3 lands well before the end on any machine.
STEPS = 60

CONFIG = """
from configs import default
from imixer_jax.training import config as config_lib


def get_config():
    c = default.get_config()
    c.model = config_lib.model_section(
        "imixer_s16", num_classes=10, img_size=16, patch_size=4, num_blocks=1, hidden_dim=16,
        tokens_mlp_dim=8, channels_mlp_dim=32, n_power=2, drop_path_rate=0.1)
    c.data.data_dir = {data_dir!r}
    c.batch_size, c.eval_batch_size = 16, 360
    c.schedule.update(unit="steps", length={steps}.0, warmup=1.0)
    c.checkpoint.every_steps, c.checkpoint.keep = 0, 3
    c.log_every_steps, c.eval_every_steps = 1, 0
    return c
"""


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("config")
    data_dir = str(path / "tfds")
    data.dataset_info("digits", data_dir=data_dir)  # prepared once, before the processes start
    (path / "tiny.py").write_text(textwrap.dedent(CONFIG.format(data_dir=data_dir, steps=STEPS)))
    return str(path / "tiny.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(config_path, workdir, jax_cache):
    """Two trainer processes of one jax.distributed run on this machine (one CPU device each)."""
    port = _free_port()
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": jax_cache}
    env.pop("XLA_FLAGS", None)
    processes = []
    for i in range(2):
        command = [sys.executable, "-m", "imixer_jax.train", "--config", config_path]
        command += ["--workdir", workdir, "--config.distributed.initialize=always"]
        command += [f"--config.distributed.coordinator_address=localhost:{port}"]
        command += ["--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"]
        pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        processes.append(subprocess.Popen(command, cwd=REPO, env=env, **pipes))
    return processes


def _finish(processes, timeout=900):
    """stderr of each process; both must exit 0 without a traceback."""
    errs = [p.communicate(timeout=timeout)[1] for p in processes]
    for p, err in zip(processes, errs):
        assert p.returncode == 0 and "Traceback" not in err, err[-3000:]
    return errs


def _logged_steps(workdir):
    try:
        return [r["step"] for r in metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))]
    except FileNotFoundError:
        return []


def _preempt(config_path, workdir, jax_cache, sig, after):
    """Start (or resume) a 2-process run, send ``sig`` to process 1 once step ``after`` is
    logged: the step that both processes saved (each says so in one line, exits 0)."""
    run = _start(config_path, workdir, jax_cache)
    deadline = time.time() + 600  # generous: a loaded machine compiles slowly
    while max(_logged_steps(workdir), default=0) < after and time.time() < deadline:
        assert all(p.poll() is None for p in run), run[0].communicate()[1][-3000:]
        time.sleep(0.01)
    run[1].send_signal(sig)  # the process that writes no metrics: the notice travels
    saved = []
    for err in _finish(run):
        lines = [line for line in err.splitlines() if ": saved the checkpoint of step " in line]
        assert len(lines) == 1, err[-3000:]
        saved.append(int(lines[0].split("of step ")[1].split()[0]))
    assert saved[0] == saved[1] and after <= saved[0] < STEPS, saved
    newest = max(int(name) for name in os.listdir(os.path.join(workdir, "checkpoints")))
    assert newest == saved[0] and max(_logged_steps(workdir)) == saved[0]
    return saved[0]


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
    """The runs compile the same programs: share them through JAX's cache."""
    return str(tmp_path_factory.mktemp("jax_cache"))


def test_sigterm_or_ctrl_c_to_one_process_saves_the_same_step_on_both(
    config_path, jax_cache, tmp_path
):
    workdir = str(tmp_path / "run")
    first = _preempt(config_path, workdir, jax_cache, signal.SIGTERM, after=3)
    # Resumed, then Ctrl-C: the process turns its first SIGINT into a SIGTERM to itself.
    second = _preempt(config_path, workdir, jax_cache, signal.SIGINT, after=first + 3)
    # The resumed run continued from the saved step: one row per step, none missing. That a
    # resumed run ends bit-identical to an uninterrupted one is tested with one process
    # (test_checkpoint.py), and that two processes compute what one does in test_sharding.py.
    assert _logged_steps(workdir) == list(range(1, second + 1))
