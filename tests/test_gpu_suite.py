"""The one-shot GPU benchmark (``benchmarks.gpu_suite``) runs on a host without TensorFlow, TFDS
or ml_collections: its dry run, under an import hook that refuses those packages in the suite's
process and in every worker it starts, prints the whole table."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from benchmarks import gpu_suite

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCKED = ("tensorflow", "tensorflow_datasets", "ml_collections")
# A sys.meta_path finder that refuses BLOCKED (and their submodules) as an absent package would,
# installed at interpreter start (sitecustomize), so the workers the suite spawns inherit it.
HOOK = textwrap.dedent(
    f"""
    import importlib.abc, sys

    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {BLOCKED!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, _Block())
    """
)


def _run(tmp_path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "sitecustomize.py").write_text(HOOK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), ROOT])}
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=ROOT, capture_output=True, text=True
    )


def test_the_hook_blocks_the_packages(tmp_path):
    # The positive control: under the hook each blocked package fails to import.
    script = "; ".join(
        f"exec('try:\\n import {name}\\nexcept ModuleNotFoundError:\\n print(1)')"
        for name in BLOCKED
    )
    out = _run(tmp_path, "-c", script)
    assert out.returncode == 0 and out.stdout.split() == ["1"] * len(BLOCKED), out.stderr


@pytest.mark.slow
def test_dry_run_prints_the_table_without_tensorflow_or_ml_collections(tmp_path):
    # About 60 s of CPU: six processes (four models, the augmentation, the hook's control).
    out = _run(tmp_path, "-m", "benchmarks.gpu_suite", "--dry_run", "--torch", "off")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert "| model | batch | img/s | compile s | peak GiB | MFU | MFU spec |" in lines
    for name, _ in gpu_suite.CASES:
        row = next(line for line in lines if line.startswith(f"| {name} | 8 | "))
        assert "failed" not in row, row
    assert any(line.startswith("device augmentation to 16 px") for line in lines), out.stdout
    assert any(line.startswith("target imixer_b16 peak memory") for line in lines), out.stdout
    assert "failed" not in out.stdout and out.stderr == "", (out.stdout, out.stderr)


def test_help_and_bad_counts(tmp_path):
    out = _run(tmp_path, "-m", "benchmarks.gpu_suite", "--help")
    assert out.returncode == 0 and "--dry_run" in out.stdout, out.stderr
    out = _run(tmp_path, "-m", "benchmarks.gpu_suite", "--steps", "0")
    assert out.returncode == 1 and out.stderr.startswith("error: need --steps >= 1"), out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
