"""Importing configs and the data package must not import TensorFlow (seconds, and a side effect
on TensorFlow's devices); only building a TFDS pipeline does."""

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _loaded_after(statements: str) -> list[str]:
    """Which of tensorflow / tensorflow_datasets a fresh interpreter has after ``statements``."""
    script = textwrap.dedent(statements) + textwrap.dedent(
        """
        import sys
        print([m for m in ("tensorflow", "tensorflow_datasets") if m in sys.modules])
        """
    )
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return eval(out.stdout.strip().split("\n")[-1])


@pytest.mark.parametrize(
    "statements",
    [
        "import configs.default, configs.cifar10, imixer_jax.training.config",
        "from imixer_jax import data; data.AUGMENT_DEFAULTS, data.mix_batch",
    ],
)
def test_imports_leave_tensorflow_alone(statements):
    assert _loaded_after(statements) == []


def test_the_tfds_pipeline_is_imported_on_first_use():
    # The positive control: the check above would see TensorFlow if it were imported.
    assert _loaded_after("from imixer_jax.data import pipeline") == [
        "tensorflow",
        "tensorflow_datasets",
    ]


def test_importing_the_trainer_leaves_the_jax_backend_alone():
    # jax.distributed.initialize must come before the backend starts: no import may start it
    # (e.g. a module-level jnp constant).
    script = textwrap.dedent(
        """
        import configs.default, imixer_jax.training.config, imixer_jax.train, imixer_jax.training
        from imixer_jax import data
        from imixer_jax.data.augment import device as device_augment
        from jax._src import xla_bridge
        imixer_jax.training.config.validate(configs.default.get_config())
        print(xla_bridge.backends_are_initialized())
        """
    )
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().split("\n")[-1] == "False"


@pytest.mark.parametrize(
    "argv",
    [
        ["imixer_jax.train", "--config", "configs/missing.py", "--workdir", "unused"],
        [
            "imixer_jax.train",
            "--config",
            "configs/default.py",
            "--workdir",
            "unused",
            "--config.model.n_iters=3",
        ],
        ["imixer_jax.evaluate", "--config", "configs/default.py", "--workdir", "missing_dir"],
    ],
)
def test_a_bad_input_is_answered_without_importing_tensorflow(argv, tmp_path):
    # Importing TensorFlow takes 5-10 s: an entry point imports it on first use (the TFDS
    # pipeline, the TensorBoard writer), so a bad input is answered at once.
    script = textwrap.dedent(
        f"""
        import atexit, runpy, sys
        atexit.register(lambda: print("tensorflow" in sys.modules))
        sys.argv = {argv!r}
        runpy.run_module(sys.argv[0], run_name="__main__")
        """
    )
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 1 and out.stdout == "False\n", (out.stdout, out.stderr)
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
