"""Run a Python script in a fresh interpreter that sees 8 CPU devices (multi-device tests)."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_on_eight_devices(script: str, *args: str, timeout: float = 300):
    """``python -c script *args`` with ``--xla_force_host_platform_device_count=8`` on the CPU,
    the repository importable; returns the ``CompletedProcess`` (text stdout and stderr)."""
    env = dict(os.environ)
    env.update(
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([REPO, env.get("PYTHONPATH", "")]),
    )
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
