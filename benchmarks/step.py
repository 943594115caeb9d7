"""Benchmark of the trainer's own train step on synthetic batches.

    python -m benchmarks.step --model imixer_s16 --batch 16 [--img_size 224]
        [--num_classes 1000] [--dtype float32|bfloat16] [--scan_blocks] [--remat none|block|...]
        [--data synthetic] [--steps 10] [--warmup 2] [--matmul_size 2048] [--compare_torch]
        [--profile_steps 0] [--json]

What is timed is ``training.make_train_step`` of the config ``config.base_config(model, ...)``
(the official recipe: AdamW, mixup/cutmix on device, drop path, per-call power iteration), with
its shardings and donated state, built through ``training.prepare`` / ``init_state`` exactly as
training builds it; only the batches are synthetic (uniform images in [-1, 1], random labels).

Reported: ``compile_s`` (lower + compile of that step), ``step_s`` and ``images_per_s`` over
``--steps`` timed steps after ``--warmup`` untimed ones, the analytic FLOPs (below), the achieved
TFLOP/s, ``mfu`` = achieved / ``matmul_tflops_per_s`` (a jitted square matmul in the same dtype,
timed in the same process: the device's practical matmul peak), ``peak_memory_bytes`` from
``device.memory_stats()`` (None where the backend has none, e.g. CPU) and XLA's compile-time
estimate ``temp_bytes`` (activations and other temporaries of the step).

Analytic FLOPs: ``imixer_jax.models.flops.forward_flops`` (matmuls only), times 3 for a train
step (the backward pass has one matmul for the input gradient and one for the weight gradient per
forward matmul).

``--remat`` recomputes part of the forward in the backward pass: those extra FLOPs are not
counted (the MFU is that of useful work). ``--compare_torch`` also times a plain PyTorch
implementation of the official model (eager, fp32 or bf16 autocast, AdamW, same shapes) in the
same process; it needs the optional extra ``torch``. ``--profile_steps N`` profiles N more steps
(``jax.profiler``) and reports the ops that take the time (``profile_ops``).
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from imixer_jax import cli
from imixer_jax.models import flops
from imixer_jax.models.configs import REMATS
from imixer_jax.models.registry import PARAMIXER_NAMES, VARIANT_NAMES, model_config

DTYPES = ("float32", "bfloat16")


def forward_flops_per_image(model: str, **overrides) -> float:
    """Analytic matmul FLOPs of one image's forward pass (``models.flops.forward_flops``)."""
    return float(flops.forward_flops(model_config(model, **overrides)))


def time_calls(run: Callable[[], object], warmup: int, steps: int) -> float:
    """Seconds for ``steps`` calls of ``run`` after ``warmup`` untimed ones (each waited for)."""
    for _ in range(warmup):
        jax.block_until_ready(run())
    start = time.perf_counter()
    out = None
    for _ in range(steps):
        out = run()
    jax.block_until_ready(out)
    return time.perf_counter() - start


def matmul_tflops(size: int, dtype: str, *, warmup: int = 2, steps: int = 5) -> float:
    """Achieved TFLOP/s of a jitted ``[size, size] @ [size, size]`` matmul in ``dtype``."""
    a, b = jax.random.normal(jax.random.key(0), (2, size, size), jnp.dtype(dtype))
    matmul = jax.jit(jnp.matmul).lower(a, b).compile()
    return 2.0 * size**3 * steps / time_calls(lambda: matmul(a, b), warmup, steps) / 1e12


def benchmark_config(
    model: str,
    *,
    batch: int,
    img_size: int = 224,
    num_classes: int = 1000,
    dtype: str = "float32",
    data: str = "synthetic",
    data_dir: str | None = None,
    **overrides,
):
    """``config.base_config`` of ``model`` for a benchmark: global batch ``batch``, dataset
    ``data`` (its class count must be ``num_classes``), a long constant schedule, no
    checkpoints or evaluation."""
    from imixer_jax.training import config as config_lib  # imports the data pipeline

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    config = config_lib.base_config(
        model,
        num_classes=num_classes,
        img_size=img_size,
        dtype=None if dtype == "float32" else dtype,
        **overrides,
    )
    config.data.name, config.data.data_dir = data, data_dir
    config.batch_size = batch
    config.schedule.update(unit="steps", length=1e6, warmup=0.0, cooldown=0.0)
    config.checkpoint.every_steps, config.eval_every_steps = 0, 0
    return config


def profile_ops(run: Callable[[], object], steps: int, top: int = 15) -> list[dict]:
    """Where the time of ``run`` (one train step) goes: ``steps`` calls under
    ``jax.profiler.trace``, the trace's complete events grouped by name without the numeric
    suffix XLA gives each instance (``ynn_fusion.192`` -> ``ynn_fusion``: the matmuls on
    XLA:CPU), Python frames and the executor's own spans left out. Returns the ``top`` groups,
    ``{'op', 'ms_per_step', 'share'}`` with ``share`` of the summed op time. Read it as a guide:
    ops that run concurrently (XLA:CPU runs independent thunks side by side) both count in
    full, and library calls that finish on their own threads (Eigen's dots) count only their
    launch."""
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(steps):
                jax.block_until_ready(run())
        (path,) = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
        with gzip.open(path) as f:
            events = json.load(f)["traceEvents"]
    spans = collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") != "X" or name.startswith(("$", "ThunkExecutor", "PjitFunction")):
            continue
        spans[re.sub(r"\.\d+$", "", name)] += e["dur"]  # microseconds
    total = sum(spans.values()) or 1.0
    return [
        {"op": op, "ms_per_step": us / 1e3 / steps, "share": us / total}
        for op, us in spans.most_common(top)
    ]


def benchmark(
    model: str,
    *,
    steps: int = 10,
    warmup: int = 2,
    matmul_size: int = 2048,
    profile_steps: int = 0,
    **config_args,
) -> dict:
    """Time the trainer's train step of ``model`` in the config ``benchmark_config(model,
    **config_args)`` (``batch``, ``img_size``, ..., and Mixer arguments such as
    ``scan_blocks=True``); returns the report dict (keys as printed by the CLI).
    ``profile_steps`` > 0: also ``profile`` (``profile_ops`` over that many further steps)."""
    from imixer_jax import training
    from imixer_jax.training import sharding

    config = benchmark_config(model, **config_args)
    batch, img_size = config.batch_size, config.model.img_size
    num_classes = config.model.num_classes
    _check_counts(batch, steps, warmup)
    if profile_steps < 0:
        raise ValueError(f"need --profile_steps >= 0; got {profile_steps}")
    run = training.prepare(config)  # one-line ConfigError for anything invalid, before compiling
    state = training.init_state(run)
    train_step = training.make_train_step(run.step_settings)
    rng = np.random.default_rng(0)
    batch_arrays = sharding.global_batch(
        run.mesh,
        {
            "image": rng.uniform(-1, 1, (batch, img_size, img_size, 3)).astype(np.float32),
            "label": rng.integers(0, num_classes, batch).astype(np.int32),
        },
    )
    start = time.perf_counter()
    compiled = train_step.lower(state, batch_arrays).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()

    def step():
        nonlocal state
        state, metrics = compiled(state, batch_arrays)  # the state is donated, as in training
        return metrics

    seconds = time_calls(step, warmup, steps)
    profile = profile_ops(step, profile_steps) if profile_steps else None
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    train_flops = 3.0 * forward_flops_per_image(model, **config.model.to_dict())
    achieved = train_flops * batch * steps / seconds / 1e12
    dtype = config.model.dtype or "float32"
    peak = matmul_tflops(matmul_size, dtype)
    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    return {
        "model": model,
        "batch": batch,
        "img_size": img_size,
        "num_classes": num_classes,
        "dtype": dtype,
        "scan_blocks": bool(config.model.get("scan_blocks", False)),
        "remat": config.model.get("remat", "none"),
        "params": int(num_params),
        "compile_s": compile_s,
        "step_s": seconds / steps,
        "images_per_s": batch * steps / seconds,
        "train_gflops_per_image": train_flops / 1e9,
        "tflops_per_s": achieved,
        "matmul_size": matmul_size,
        "matmul_tflops_per_s": peak,
        "mfu": achieved / peak,
        "peak_memory_bytes": stats.get("peak_bytes_in_use"),
        "temp_bytes": int(memory.temp_size_in_bytes) if memory is not None else None,
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "jax_version": jax.__version__,
        **({"profile": profile} if profile else {}),
    }


def _check_counts(batch: int, steps: int, warmup: int) -> None:
    if batch < 1 or steps < 1 or warmup < 0:
        raise ValueError(
            f"need --batch >= 1, --steps >= 1, --warmup >= 0; got {batch}, {steps}, {warmup}"
        )


FLAGS = cli.flag_values()
_MODEL = flags.DEFINE_enum(
    "model", None, [*VARIANT_NAMES, *PARAMIXER_NAMES], "Registered variant.", flag_values=FLAGS
)
_BATCH = flags.DEFINE_integer("batch", None, "Global batch size.", flag_values=FLAGS)
_IMG_SIZE = flags.DEFINE_integer("img_size", 224, "Image size in pixels.", flag_values=FLAGS)
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 1000, "Classes of the head.", flag_values=FLAGS)
_DTYPE = flags.DEFINE_enum("dtype", "float32", DTYPES, "Compute dtype.", flag_values=FLAGS)
_SCAN_BLOCKS = flags.DEFINE_bool(
    "scan_blocks", False, "Blocks under nnx.scan (Mixer).", flag_values=FLAGS
)
_REMAT = flags.DEFINE_enum("remat", "none", REMATS, "Rematerialisation (Mixer).", flag_values=FLAGS)
_DATA = flags.DEFINE_string(
    "data", "synthetic", "Dataset name (its class count only).", flag_values=FLAGS
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir of --data.", flag_values=FLAGS)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps.", flag_values=FLAGS)
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps before timing.", flag_values=FLAGS)
_MATMUL_SIZE = flags.DEFINE_integer(
    "matmul_size", 2048, "Size of the square matmul timed as the peak.", flag_values=FLAGS
)
_COMPARE_TORCH = flags.DEFINE_bool(
    "compare_torch", False, "Also time eager PyTorch (extra torch).", flag_values=FLAGS
)
_PROFILE_STEPS = flags.DEFINE_integer(
    "profile_steps",
    0,
    "Also profile this many further steps and report the ops that take the time.",
    flag_values=FLAGS,
)
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object.", flag_values=FLAGS)
flags.mark_flags_as_required(["model", "batch"], flag_values=FLAGS)


def main() -> None:
    model, batch = _MODEL.value, _BATCH.value
    try:
        _check_counts(batch, _STEPS.value, _WARMUP.value)
    except ValueError as e:
        raise cli.UsageError(f"{e}; see --help") from e
    layout = dict(scan_blocks=_SCAN_BLOCKS.value, remat=_REMAT.value)
    if model_config(model).arch == "paramixer":
        if _SCAN_BLOCKS.value or _REMAT.value != "none" or _COMPARE_TORCH.value:
            raise cli.UsageError(
                "--scan_blocks, --remat and --compare_torch are for mixer_* / imixer_*; "
                "leave them out for this model"
            )
        layout = {}
    if _COMPARE_TORCH.value:
        try:
            from benchmarks import torch_reference
        except ImportError as e:
            raise cli.UsageError(
                f"--compare_torch needs PyTorch ({e}); pip install -e '.[torch]'"
            ) from e
    try:
        report = benchmark(
            model,
            batch=batch,
            img_size=_IMG_SIZE.value,
            num_classes=_NUM_CLASSES.value,
            dtype=_DTYPE.value,
            data=_DATA.value,
            data_dir=_DATA_DIR.value,
            steps=_STEPS.value,
            warmup=_WARMUP.value,
            matmul_size=_MATMUL_SIZE.value,
            profile_steps=_PROFILE_STEPS.value,
            **layout,
        )
    except ValueError as e:  # config.ConfigError included
        raise cli.UsageError(f"{' '.join(str(e).split())}; see --help") from e
    if _COMPARE_TORCH.value:
        torch_timing = torch_reference.time_train_step(
            model_config(model, num_classes=_NUM_CLASSES.value, img_size=_IMG_SIZE.value).to_dict(),
            batch=batch,
            dtype=_DTYPE.value,
            steps=_STEPS.value,
            warmup=max(_WARMUP.value, 1),
        )
        report["torch_images_per_s"] = batch / torch_timing.step_s
        report["speedup_vs_torch"] = report["images_per_s"] / report["torch_images_per_s"]
    if _JSON.value:
        print(json.dumps(report))
        return
    for key, value in report.items():
        if key == "profile":
            print(f"{key:>22}: ms per step, share of the op time")
            for row in value:
                print(f"{row['ms_per_step']:>22.1f}  {row['share']:6.1%}  {row['op']}")
            continue
        print(f"{key:>22}: {value:.4g}" if isinstance(value, float) else f"{key:>22}: {value}")


if __name__ == "__main__":
    cli.run(main, FLAGS)
