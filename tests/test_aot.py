"""Ahead-of-time compilation for a TPU topology (``python -m imixer_jax.aot``): the one-line
errors, and a small model's train and eval steps compiled for v5e:2x2 where libtpu is installed.

The command runs in a subprocess: libtpu reads its environment once, when a process first loads
it, and only a fresh process shows what a user sees on stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import pytest

from configs import default
from imixer_jax.cli import errors
from imixer_jax.models import flops
from imixer_jax.training import aot
from imixer_jax.training import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBTPU = aot.libtpu_available()
needs_libtpu = pytest.mark.skipif(
    not LIBTPU, reason='libtpu is not installed (pip install -e ".[tpu]")'
)
# libtpu's warnings when it is loaded without the environment the command gives it.
LIBTPU_NOISE = ("TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES", "InitGoogle")


def _aot(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != errors.VERBOSE_ENV}
    env.update(JAX_LOG_COMPILES="1", PYTHONPATH=os.pathsep.join([REPO, env.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-m", "imixer_jax.aot", "--config", "configs/default.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--topology", "tpu:v5e:4x4"], "unknown TPU topology 'tpu:v5e:4x4'"),
        pytest.param(
            ["--topology", "v5e:2x2"],
            'needs libtpu, which is not installed; pip install -e ".[tpu]"',
            marks=pytest.mark.skipif(LIBTPU, reason="libtpu is installed"),
        ),
        pytest.param(["--topology", "v5e:3x3"], "not divisible", marks=needs_libtpu),
        pytest.param(
            ["--topology", "v5e:2x2", "--config.mesh.shape=(8, 1)"],
            "(8, 1) needs 8 devices, but there are 4 (the chips of v5e:2x2)",
            marks=needs_libtpu,
        ),
    ],
)
def test_errors_are_one_line_before_anything_compiles(args, expected):
    out = _aot(*args)
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Compiling" not in out.stderr  # JAX_LOG_COMPILES logs every compilation
    # JAX_LOG_COMPILES also logs slow traces.
    lines = [line for line in out.stderr.strip().splitlines() if "Finished tracing" not in line]
    assert len(lines) == 1, out.stderr[-3000:]
    assert lines[0].startswith("error: ") and "; " in lines[0] and expected in lines[0], lines[0]


class _RefusedStep:
    """Stands in for a jitted step whose compile XLA refuses, with the line libtpu gave for
    imixer_l16 on v5e:4x4 at batch 2048 (benchmarks/results/pod_scale.jsonl)."""

    LINE = (
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
        "temporaries (27.66G) exceeds available HBM (15.75G)."
    )

    def lower(self, *args):
        return self

    def compile(self):
        raise jax.errors.JaxRuntimeError(self.LINE)


def test_a_step_larger_than_the_chip_is_a_result_not_an_error():
    program = aot.compile_program(_RefusedStep(), (), analytic_flops=1.0)
    assert program.out_of_memory == _RefusedStep.LINE.removeprefix("RESOURCE_EXHAUSTED: ")
    assert program.peak_bytes is None and program.xla_flops is None
    assert program.analytic_flops == 1.0


@pytest.mark.slow
@needs_libtpu
def test_small_model_compiles_for_v5e_2x2():
    """The default config's model cut to one block with the token MLP (the shortest compile that
    has every kind of layer the formula counts), on a (2, 2) mesh."""
    overrides = dict(num_blocks=1, token_mixer="mlp")
    out = _aot(
        "--topology",
        "v5e:2x2",
        "--config.mesh.shape=(2, 2)",
        *(f"--config.model.{k}={v}" for k, v in overrides.items()),
        "--json",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for noise in (*LIBTPU_NOISE, "compilation cache"):  # the suite's cache is inherited
        assert noise not in out.stderr, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["config"] == "configs/default.py"
    assert (report["chips"], report["device_kind"]) == (4, "TPU v5 lite")
    assert report["mesh"] == {"data": 2, "model": 2}
    assert report["hbm_bytes"] == 16 * 2**30 and report["fits"]

    train, evaluation = report["train"], report["eval"]
    assert 0 < train["alias_bytes"] <= train["argument_bytes"]  # the state is donated
    assert train["peak_bytes"] == (
        train["argument_bytes"]
        + train["output_bytes"]
        - train["alias_bytes"]
        + train["temp_bytes"]
        + train["code_bytes"]
    )
    assert report["state_bytes"] < train["argument_bytes"]  # the batch is an argument too
    assert evaluation["alias_bytes"] == 0
    assert evaluation["peak_bytes"] > report["state_bytes"] + evaluation["temp_bytes"]
    assert report["peak_bytes"] == max(train["peak_bytes"], evaluation["peak_bytes"])

    config = default.get_config()
    config.model.update(overrides)
    forward = flops.forward_flops(config_lib.typed_model_config(config))
    assert train["analytic_flops"] == 3 * forward * config.batch_size / 4
    assert evaluation["analytic_flops"] == forward * config.eval_batch_size / 4
    # XLA's count is per chip and adds what the formula leaves out (LayerNorm, GELU, AdamW,
    # mixup), a large share at D = 64: above the formula, but not by the 4 chips' factor.
    for program in (train, evaluation):
        assert program["analytic_flops"] < program["xla_flops"] < 4 * program["analytic_flops"]

    layout = report["layout"]
    rows = [row for group in layout.values() for row in group]
    assert len({row["name"] for row in rows}) == len(rows)  # each parameter in one group
    assert sum(row["size"] for row in rows) == report["params"]
    assert any("model" in group for group in layout)  # the model axis splits the MLPs
