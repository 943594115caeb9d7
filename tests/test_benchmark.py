"""The benchmark: the trainer's own step on synthetic batches (tiny models, one timed step)
and one-line CLI errors (the analytic FLOP formula is tested in test_models.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from benchmarks.step import benchmark
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
        profile_steps=1,
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
    # The profile: op groups by time, their shares of the summed op time.
    profile = report["profile"]
    assert profile and all(row["ms_per_step"] > 0 for row in profile)
    assert [row["share"] for row in profile] == sorted((r["share"] for r in profile), reverse=True)
    assert sum(row["share"] for row in profile) <= 1.0 + 1e-9
    assert not any(row["op"].startswith("$") or re.search(r"\.\d+$", row["op"]) for row in profile)


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
