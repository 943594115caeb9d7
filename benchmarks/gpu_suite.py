"""One-shot GPU benchmark: the trainer's train step of four models, bf16, 224 px, one table.

    python -m benchmarks.gpu_suite [--steps 20] [--warmup 3] [--matmul_size 8192]
        [--torch auto|off] [--json FILE] [--dry_run]

Rows: mixer_s16 and imixer_s16 at batch 256, mixer_b16 and imixer_b16 at batch 128, bfloat16
compute, 224 px, 1000 classes, synthetic batches already on the device (uniform images in [-1, 1],
random labels). What is timed is the trainer's own ``training.make_train_step`` (mixup/cutmix,
drop path, per-call power iteration, the recipe's AdamW with weight decay off 1-D parameters, a
constant learning rate), built from the typed model config (``models.registry``) through
``training.StepSettings`` and ``training.new_state``: the path needs neither TensorFlow, TFDS nor
ml_collections. Columns:

* ``img/s``: images per second over ``--steps`` timed steps after ``--warmup`` untimed ones.
* ``compile s``: lowering and compiling the step, once per model.
* ``peak GiB``: ``device.memory_stats()['peak_bytes_in_use']`` after the timed steps where the
  backend reports it (GPU, TPU); elsewhere XLA's estimate of the step (``memory_analysis()``:
  arguments + outputs - aliased + temporaries), marked ``(XLA est.)``. Each model runs in a
  process of its own, so the device's peak is that model's alone.
* ``MFU``: the analytic train FLOPs (3 x ``models.flops.forward_flops``, matmuls only) per second
  against a ``--matmul_size`` square bfloat16 matmul timed in the same process; ``MFU spec``
  against the device's datasheet bf16 dense peak where it is known (``SPEC_TFLOPS``).
* With PyTorch importable (``--torch auto``): ``benchmarks.torch_reference`` (the official model
  in PyTorch, bf16 autocast, AdamW, same shapes), eager and with the model under
  ``torch.compile``, their img/s, the compiled model's first step (its compilation), and JAX's
  img/s over each.

Below the table: the device augmentation's cost per image (``data.augment.device.augment_batch``
jitted: crop and antialiased bicubic resize to 224, flip, RandAugment rand-m9-mstd0.5-inc1,
normalisation, random erasing) from CIFAR-sized 32 x 32 canvases and from the 448 x 448 canvases
of JPEG datasets, and the issue's targets checked on the figures.

``--dry_run`` runs the same path on the CPU in well under a minute: the four rows with tiny models
(32 px, patch 8, one block, D 32, one power-iteration step), batch 8, one warm-up and two timed
steps, a 128 matmul and 16 px augmentation, compiled without XLA's backend optimisation
(``RUN_ONCE``); its figures mean nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

from absl import flags

from imixer_jax import cli

CASES = (("mixer_s16", 256), ("imixer_s16", 256), ("mixer_b16", 128), ("imixer_b16", 128))
IMG_SIZE, NUM_CLASSES, DTYPE = 224, 1000, "bfloat16"
# The official recipe's AdamW (docs/recipe.md#official-recipe), at its peak learning rate.
ADAMW = dict(learning_rate=5e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05)
# Device augmentation: canvas sides (CIFAR's stored 32 x 32; a JPEG crop padded to 2 S).
CANVASES = (32, 2 * IMG_SIZE)
# Datasheet bf16 dense tensor-core peaks in TFLOP/s, by a substring of ``device_kind``.
SPEC_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM5 (device_kind "NVIDIA H100 80GB HBM3")
    ("H200", 989.0),
    ("A100", 312.0),
)
# The targets on an H100 (issue 19).
TARGET_IMIXER_S16_IMG_S = 6600.0
TARGET_VS_TORCH_COMPILE = 1.2
TARGET_MEMORY_RATIO = 1.8


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What one run measures: the model overrides, batches, step counts and matmul size."""

    overrides: dict
    batches: dict[str, int]
    steps: int
    warmup: int
    matmul_size: int
    augment_size: int
    augment_batch: int
    canvases: tuple[int, ...]
    compiler_options: dict | None = None


def sizes(*, dry_run: bool, steps: int, warmup: int, matmul_size: int) -> Sizes:
    """The full suite's sizes, or the dry run's tiny ones."""
    if dry_run:
        from imixer_jax.training.train_state import RUN_ONCE

        tiny = dict(
            img_size=32,
            patch_size=8,
            num_blocks=1,
            hidden_dim=32,
            tokens_mlp_dim=16,
            channels_mlp_dim=64,
            num_classes=10,
            n_power=1,
        )
        batches = {name: 8 for name, _ in CASES}
        return Sizes(tiny, batches, 2, 1, 128, 16, 4, (16, 32), compiler_options=RUN_ONCE)
    full = dict(img_size=IMG_SIZE, num_classes=NUM_CLASSES)
    return Sizes(full, dict(CASES), steps, warmup, matmul_size, IMG_SIZE, 256, CANVASES)


def _timed(run: Callable[[], object], warmup: int, steps: int) -> float:
    """Mean seconds of ``steps`` calls of ``run`` after ``warmup`` untimed ones."""
    from benchmarks.step import time_calls

    return time_calls(run, warmup, steps) / steps


def matmul_tflops(size: int, *, steps: int = 10) -> float:
    """TFLOP/s of a jitted ``[size, size] @ [size, size]`` bfloat16 matmul on the default device."""
    import jax
    import jax.numpy as jnp

    a, b = jax.random.normal(jax.random.key(0), (2, size, size), jnp.bfloat16)
    matmul = jax.jit(jnp.matmul).lower(a, b).compile()
    return 2.0 * size**3 / _timed(lambda: matmul(a, b), 2, steps) / 1e12


def spec_tflops(device_kind: str) -> float | None:
    """The datasheet bf16 dense peak of ``device_kind``, or None if unknown."""
    return next((peak for key, peak in SPEC_TFLOPS if key in device_kind), None)


def jax_row(name: str, batch: int, s: Sizes) -> dict:
    """Compile and time the trainer's train step of variant ``name`` at global ``batch``."""
    import jax
    import numpy as np
    import optax

    from imixer_jax.data.defaults import AUGMENT_DEFAULTS
    from imixer_jax.models import flops, registry
    from imixer_jax.training import (
        StepSettings,
        graphdefs,
        make_train_step,
        new_state,
        optim,
        sharding,
    )
    from imixer_jax.training.train_state import RUN_ONCE

    model = registry.model_config(name, dtype=DTYPE, **s.overrides)
    mesh = sharding.create_mesh(sharding.mesh_shape((-1, 1), jax.device_count()), ("data", "model"))
    schedule = optax.constant_schedule(ADAMW["learning_rate"])
    tx = optax.adamw(**{**ADAMW, "learning_rate": schedule}, mask=optim.decay_mask)

    def init():
        return new_state(model, tx, seed=0, ema=False)

    shardings = sharding.tree_shardings(mesh, jax.eval_shape(init))
    state = jax.jit(init, out_shardings=shardings, compiler_options=RUN_ONCE)()
    settings = StepSettings(
        mesh=mesh,
        graphdef=graphdefs(model)[0],
        tx=tx,
        schedule=schedule,
        state_shardings=shardings,
        num_classes=model.num_classes,
        image_size=model.img_size,
        augment=AUGMENT_DEFAULTS,
    )
    rng = np.random.default_rng(0)
    size = model.img_size
    batch_arrays = sharding.global_batch(
        mesh,
        {
            "image": rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32),
            "label": rng.integers(0, model.num_classes, batch).astype(np.int32),
        },
    )
    start = time.perf_counter()
    compiled = make_train_step(settings).lower(state, batch_arrays).compile(s.compiler_options)
    compile_s = time.perf_counter() - start

    def step():
        nonlocal state
        state, metrics = compiled(state, batch_arrays)  # donated, as in training
        return metrics

    step_s = _timed(step, s.warmup, s.steps)
    device = jax.devices()[0]
    peak = (device.memory_stats() or {}).get("peak_bytes_in_use")
    memory = compiled.memory_analysis()
    estimate = None
    if memory is not None:
        estimate = (
            memory.argument_size_in_bytes
            + memory.output_size_in_bytes
            - memory.alias_size_in_bytes
            + memory.temp_size_in_bytes
        )
    train_flops = 3.0 * flops.forward_flops(model)
    matmul = matmul_tflops(s.matmul_size)
    achieved = train_flops * batch / step_s / 1e12
    spec = spec_tflops(device.device_kind)
    return {
        "model": name,
        "batch": batch,
        "img_size": size,
        "images_per_s": batch / step_s,
        "compile_s": compile_s,
        "peak_memory_bytes": peak,
        "xla_peak_estimate_bytes": estimate,
        "train_tflops_per_s": achieved,
        "matmul_tflops_per_s": matmul,
        "mfu": achieved / matmul,
        "spec_tflops_per_s": spec,
        "mfu_spec": achieved / spec if spec else None,
        "device_kind": device.device_kind,
        "platform": device.platform,
        "device_count": jax.device_count(),
        "jax_version": jax.__version__,
    }


def augment_seconds(canvas: int, s: Sizes) -> float:
    """Mean seconds of the jitted device augmentation (the recipe's ``AUGMENT_DEFAULTS``) of a
    batch of ``s.augment_batch`` uint8 ``canvas`` x ``canvas`` images with random crop boxes to
    ``s.augment_size`` px, a fresh key per call."""
    import jax
    import numpy as np

    from imixer_jax.data.augment import device as device_augment
    from imixer_jax.data.defaults import AUGMENT_DEFAULTS

    augment = {**AUGMENT_DEFAULTS, "on_device": True}
    n, rng = s.augment_batch, np.random.default_rng(0)
    extent = rng.integers(canvas // 4, canvas + 1, (n, 2))  # crop heights and widths
    corner = (rng.uniform(size=(n, 2)) * (canvas - extent + 1)).astype(np.int64)
    batch = jax.device_put(
        {
            "image": rng.integers(0, 256, (n, canvas, canvas, 3), dtype=np.uint8),
            "box": np.concatenate([corner, extent], axis=1).astype(np.int32),
            "bilinear": np.zeros(n, bool),
        }
    )
    keys = iter(jax.random.split(jax.random.key(0), 1 + s.warmup + s.steps))
    compiled = (
        jax.jit(lambda key, b: device_augment.augment_batch(key, b, augment, s.augment_size))
        .lower(next(keys), batch)
        .compile(s.compiler_options)
    )
    return _timed(lambda: compiled(next(keys), batch), s.warmup, s.steps)


def augment_row(s: Sizes) -> dict:
    """Seconds per image of the device augmentation from each of ``s.canvases``."""
    per_image = {str(c): augment_seconds(c, s) / s.augment_batch for c in s.canvases}
    return {
        "augment_size": s.augment_size,
        "augment_batch": s.augment_batch,
        "seconds_per_image": per_image,
    }


def torch_rows(s: Sizes) -> list[dict]:
    """Eager and ``torch.compile`` PyTorch of the official model for every row."""
    import torch

    from benchmarks import torch_reference
    from imixer_jax.models import registry

    rows = []
    for name, batch in s.batches.items():
        k = registry.model_config(name, **s.overrides).to_dict()
        row = {"model": name, "batch": batch, "torch_version": torch.__version__}
        for mode, compile in (("eager", False), ("compile", True)):
            timing = torch_reference.time_train_step(
                k, batch=batch, dtype=DTYPE, steps=s.steps, warmup=s.warmup, compile=compile
            )
            row[f"{mode}_images_per_s"] = batch / timing.step_s
            row[f"{mode}_first_step_s"] = timing.first_step_s
            row[f"{mode}_peak_memory_bytes"] = timing.peak_memory_bytes
        rows.append(row)
    return rows


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


FLAGS = cli.flag_values()
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per model.", flag_values=FLAGS)
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps before timing.", flag_values=FLAGS)
_MATMUL_SIZE = flags.DEFINE_integer(
    "matmul_size", 8192, "Side of the bf16 matmul timed as the practical peak.", flag_values=FLAGS
)
_TORCH = flags.DEFINE_enum(
    "torch",
    "auto",
    ["auto", "off"],
    "auto: also time PyTorch eager and torch.compile when torch is importable.",
    flag_values=FLAGS,
)
_JSON = flags.DEFINE_string(
    "json", None, "Also write every figure to this JSON file.", flag_values=FLAGS
)
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Tiny models and steps, to check the path on a CPU.", flag_values=FLAGS
)
_TIMEOUT = flags.DEFINE_integer(
    "worker_timeout_s", 420, "Seconds each worker process may take.", flag_values=FLAGS
)
_WORKER = flags.DEFINE_string(
    "worker", None, "Internal: run one part ('jax:MODEL', 'augment', 'torch').", flag_values=FLAGS
)


def _sizes() -> Sizes:
    return sizes(
        dry_run=_DRY_RUN.value,
        steps=_STEPS.value,
        warmup=_WARMUP.value,
        matmul_size=_MATMUL_SIZE.value,
    )


def _work(part: str) -> object:
    """One worker's part (in its own process, so that the device's peak memory is its own)."""
    s = _sizes()
    if part == "augment":
        return augment_row(s)
    if part == "torch":
        return torch_rows(s)
    name = part.removeprefix("jax:")
    return jax_row(name, s.batches[name], s)


def _start(part: str) -> subprocess.Popen:
    """The worker process for ``part`` (its result: one JSON line on stdout)."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.gpu_suite",
        f"--steps={_STEPS.value}",
        f"--warmup={_WARMUP.value}",
        f"--matmul_size={_MATMUL_SIZE.value}",
        "--dry_run" if _DRY_RUN.value else "--nodry_run",
        f"--worker={part}",
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(worker: subprocess.Popen) -> tuple[object | None, str | None]:
    """``(result, None)`` of a worker, or ``(None, its last error line)``."""
    try:
        stdout, stderr = worker.communicate(timeout=_TIMEOUT.value)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.communicate()
        return None, f"timed out after {_TIMEOUT.value} s"
    if worker.returncode:
        lines = stderr.strip().splitlines() or [f"exit status {worker.returncode}"]
        return None, lines[-1]
    return json.loads(stdout.strip().splitlines()[-1]), None


def _run_workers(parts: list[str]) -> list[tuple[object | None, str | None]]:
    """Every part's result, one worker at a time on an accelerator (each has the device to
    itself); the dry run starts them all at once (the CPU's cores share the compiles)."""
    if _DRY_RUN.value:
        return [_result(w) for w in [_start(p) for p in parts]]
    return [_result(_start(p)) for p in parts]


def _gib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f}"


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(rows: list[dict], torch: list[dict] | None, augment: dict | None) -> str:
    """The suite's report: the table, the augmentation's cost and the targets."""
    by_name = {r["model"]: r for r in torch or []}
    head = ["model", "batch", "img/s", "compile s", "peak GiB", "MFU", "MFU spec"]
    if torch is not None:
        head += ["torch eager", "torch.compile", "compile 1st s", "x eager", "x compile"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['batch']} | failed: {r['error']} |")
            continue
        peak = _gib(r["peak_memory_bytes"])
        if r["peak_memory_bytes"] is None:
            peak = f"{_gib(r['xla_peak_estimate_bytes'])} (XLA est.)"
        cells = [
            r["model"],
            str(r["batch"]),
            f"{r['images_per_s']:,.1f}",
            f"{r['compile_s']:.1f}",
            peak,
            f"{r['mfu']:.1%}",
            _fmt(r["mfu_spec"], ".1%"),
        ]
        t = by_name.get(r["model"])
        if torch is not None and t is None:
            cells += ["failed"] + ["-"] * 4
        elif t is not None:
            cells += [
                f"{t['eager_images_per_s']:,.1f}",
                f"{t['compile_images_per_s']:,.1f}",
                f"{t['compile_first_step_s']:.1f}",
                f"{r['images_per_s'] / t['eager_images_per_s']:.2f}",
                f"{r['images_per_s'] / t['compile_images_per_s']:.2f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    ok = [r for r in rows if "error" not in r]
    if ok:
        r = ok[0]
        spec = _fmt(r["spec_tflops_per_s"], ".0f")
        lines.insert(
            0,
            f"{r['device_kind']} x{r['device_count']} ({r['platform']}), jax {r['jax_version']}; "
            f"bf16 matmul {r['matmul_tflops_per_s']:.1f} TFLOP/s measured, {spec} spec",
        )
    if augment is not None:
        costs = ", ".join(
            f"{canvas} x {canvas} canvas {seconds * 1e6:,.1f} us"
            for canvas, seconds in augment["seconds_per_image"].items()
        )
        lines.append(
            f"device augmentation to {augment['augment_size']} px, per image (batch "
            f"{augment['augment_batch']}): {costs}"
        )
    lines += targets(ok, by_name)
    return "\n".join(lines)


def targets(rows: list[dict], torch: dict[str, dict]) -> list[str]:
    """The issue's H100 targets, each with the measured figure ('met' / 'not met')."""
    r = {row["model"]: row for row in rows}
    checks = []
    if "imixer_s16" in r:
        rate = r["imixer_s16"]["images_per_s"]
        checks.append(
            (
                f"imixer_s16 >= {TARGET_IMIXER_S16_IMG_S:,.0f} img/s",
                rate,
                rate >= TARGET_IMIXER_S16_IMG_S,
            )
        )
    for name in ("imixer_s16", "mixer_s16", "mixer_b16"):
        if name in r and name in torch:
            ratio = r[name]["images_per_s"] / torch[name]["compile_images_per_s"]
            what = f"{name} >= {TARGET_VS_TORCH_COMPILE}x torch.compile"
            checks.append((what, ratio, ratio >= TARGET_VS_TORCH_COMPILE))
    if "imixer_b16" in r and "mixer_b16" in r:

        def peak(row):
            return row["peak_memory_bytes"] or row["xla_peak_estimate_bytes"]

        ratio = peak(r["imixer_b16"]) / peak(r["mixer_b16"])
        what = f"imixer_b16 peak memory <= {TARGET_MEMORY_RATIO}x mixer_b16"
        checks.append((what, ratio, ratio <= TARGET_MEMORY_RATIO))
    return [
        f"target {what}: {value:,.2f} ({'met' if met else 'not met'})"
        for what, value, met in checks
    ]


def main() -> None:
    if _STEPS.value < 1 or _WARMUP.value < 1 or _MATMUL_SIZE.value < 1:
        raise cli.UsageError(
            f"need --steps >= 1, --warmup >= 1 and --matmul_size >= 1; got {_STEPS.value}, "
            f"{_WARMUP.value}, {_MATMUL_SIZE.value}; see --help"
        )
    if _WORKER.value:
        print(json.dumps(_work(_WORKER.value)))
        return
    if _JSON.value:
        cli.output_dir(os.path.dirname(os.path.abspath(_JSON.value)), "--json")
    s = _sizes()
    start = time.perf_counter()
    parts = [f"jax:{name}" for name in s.batches] + ["augment"]
    with_torch = _TORCH.value == "auto" and torch_available()
    results = _run_workers(parts + ["torch"] * with_torch)
    rows = [
        result if error is None else {"model": name, "batch": batch, "error": error}
        for (name, batch), (result, error) in zip(s.batches.items(), results)
    ]
    for part, (_, error) in zip(parts + ["torch"], results):
        if error is not None:
            print(f"{part}: {error}", file=sys.stderr, flush=True)
    augment = results[len(s.batches)][0]
    torch = (results[-1][0] or []) if with_torch else None
    if _DRY_RUN.value:
        print("dry run: tiny models on this machine; the figures mean nothing")
    print(table(rows, torch, augment))
    print(f"suite: {time.perf_counter() - start:.0f} s")
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump({"jax": rows, "torch": torch, "augment": augment}, f, indent=1)


if __name__ == "__main__":
    cli.run(main, FLAGS)
