"""Tests of the throughput benchmark (tiny models, one timed step)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from imixer_jax.benchmark import benchmark

POSITIVE = (
    "params",
    "compile_s",
    "step_s",
    "images_per_s",
    "gflops_per_step",
    "gflops_per_s",
    "matmul_gflops_per_s",
    "efficiency",
)
# A small iMixer: 16 tokens (32 px, patch 8), D 16, T 8, H 16, C 32, 2 blocks.
TINY = dict(patch_size=8, num_blocks=2, hidden_dim=16, tokens_mlp_dim=8, channels_mlp_dim=32)


@pytest.mark.parametrize("train", [False, True])
def test_benchmark_tiny_imixer(train):
    report = benchmark(
        "imixer_s16",
        batch=2,
        img_size=32,
        num_classes=10,
        train=train,
        steps=2,
        warmup=1,
        matmul_size=64,
        **TINY,
    )
    assert report["mode"] == ("train" if train else "eval")
    # stem 3,088 + 2 blocks x 1,696 (LN 32, fc1 136, fc2 144, fc_sn1 144, fc_sn2 136, LN 32,
    # fc_c1 544, fc_c2 528) + final LN 32 + head 170
    assert report["params"] == 6_682
    for key in POSITIVE:
        assert report[key] > 0, key
    assert report["images_per_s"] == pytest.approx(2 / report["step_s"])
    assert report["device_kind"] and report["jax_version"]


def test_benchmark_cli_json():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "imixer_jax.benchmark",
            "--model",
            "mixer_s32",
            "--batch",
            "1",
            "--img-size",
            "32",
            "--num-classes",
            "10",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--matmul-size",
            "64",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    report = json.loads(out)
    assert report["model"] == "mixer_s32" and report["dtype"] == "float32"
    for key in POSITIVE:
        assert report[key] > 0, key


def test_benchmark_rejects_bad_dtype():
    with pytest.raises(ValueError, match="dtype"):
        benchmark("mixer_s16", batch=1, dtype="float16")
