"""The benchmark: the trainer's own step on synthetic batches (tiny models, one timed step),
the analytic FLOP formula against XLA's count, and one-line CLI errors."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from benchmarks.step import benchmark, forward_flops_per_image
from imixer_jax.models.registry import create_model
from imixer_jax.training import config as config_lib

POSITIVE = (
    "params",
    "compile_s",
    "step_s",
    "images_per_s",
    "train_gflops_per_image",
    "tflops_per_s",
    "matmul_tflops_per_s",
    "mfu",
    "temp_bytes",
)
# A small iMixer on 16 px digits-shaped batches: 16 tokens (patch 4), D 16, T 8, H 16, C 32.
TINY = dict(patch_size=4, num_blocks=2, hidden_dim=16, tokens_mlp_dim=8, channels_mlp_dim=32)


@pytest.mark.slow
@pytest.mark.parametrize("layout", [dict(), dict(scan_blocks=True, remat="block")])
def test_benchmark_times_the_trainers_step(tmp_path, layout):
    report = benchmark(
        "imixer_s16",
        batch=4,
        img_size=16,
        num_classes=10,
        data="digits",
        data_dir=str(tmp_path),
        steps=1,
        warmup=1,
        matmul_size=64,
        n_power=2,
        **TINY,
        **layout,
    )
    # stem 784 + 2 blocks x 1,696 (LN 32, fc1 136, fc2 144, fc_sn1 144, fc_sn2 136, LN 32,
    # fc_c1 544, fc_c2 528) + final LN 32 + head 170
    assert report["params"] == 4_378
    for key in POSITIVE:
        assert report[key] > 0, key
    assert report["images_per_s"] == pytest.approx(4 / report["step_s"])
    assert report["scan_blocks"] == bool(layout) and report["device_kind"]
    assert report["peak_memory_bytes"] is None or report["peak_memory_bytes"] > 0


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("imixer_s16", dict(token_mixer="mlp")),
        ("imixer_s16", dict(token_mixer="imlp")),
        ("paramixer_s16_224", dict()),
        ("asymmixer_s16_224", dict()),
    ],
)
def test_analytic_flops_match_xla_count(name, kwargs):
    """One S/16 block at 64 px (16 tokens) with one fixed-point step (XLA counts a loop body
    once, so n_iter = 1 keeps the counts comparable). XLA also counts the elementwise ops that
    the formula leaves out (LayerNorm, GELU: tens of FLOPs per activation against 2 D = 1,024
    per matmul output), i.e. it must be higher by a few percent to ~15%, never lower."""
    kwargs = dict(num_blocks=1, img_size=64, n_iter=1, **kwargs)
    model = nnx.eval_shape(lambda: create_model(name, rngs=nnx.Rngs(0), **kwargs))
    model.eval()
    graphdef, state = nnx.split(model)
    images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    xla = forward.lower(state, images).cost_analysis()["flops"]
    analytic = forward_flops_per_image(name, **kwargs)
    assert 0.85 * xla < analytic <= xla


def test_benchmark_rejects_bad_arguments():
    with pytest.raises(ValueError, match="dtype"):
        benchmark("mixer_s16", batch=1, dtype="float16")
    with pytest.raises(ValueError, match="batch"):
        benchmark("mixer_s16", batch=0)
    with pytest.raises(config_lib.ConfigError, match="model.remat"):
        benchmark("mixer_s16", batch=1, img_size=32, num_classes=10, data="digits", remat="x")


@pytest.mark.parametrize(
    "args, names",
    [
        (["--model", "mixer_s16", "--batch", "0"], "batch"),
        (["--model", "mixer_s16", "--batch", "2", "--remat", "all"], "--remat"),
        (["--model", "paramixer_s16_224", "--batch", "2", "--scan_blocks"], "--scan_blocks"),
    ],
)
def test_cli_errors_are_one_line(args, names):
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.step", *args],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and names in lines[0], out.stderr


@pytest.mark.slow
def test_cli_json(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.step", "--model", "mixer_s32", "--batch", "2"]
        + ["--img_size", "32", "--num_classes", "10", "--data", "digits", "--steps", "1"]
        + ["--warmup", "0", "--matmul_size", "64", "--json", "--data_dir", str(tmp_path)]
        + ["--scan_blocks"],  # one compiled block instead of 8 (the S/32's 19M parameters stay)
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    report = json.loads(out.strip().splitlines()[-1])
    assert report["model"] == "mixer_s32" and report["dtype"] == "float32"
    assert report["scan_blocks"] is True
    for key in POSITIVE:
        assert report[key] > 0, key
