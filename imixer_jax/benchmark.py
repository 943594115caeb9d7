"""Throughput benchmark of a registered model on the local default device.

    python -m imixer_jax.benchmark --model imixer_s16 --batch 16 [--img-size 224]
        [--num-classes 1000] [--train] [--steps 10] [--dtype float32|bfloat16] [--json]

Eval mode times the jitted forward; ``--train`` times a full train step (forward with drop path
and power iteration, backward, optax AdamW update). Reported: compile seconds (lower + compile,
timed apart from running), images/s over ``--steps`` timed steps after ``--warmup`` untimed ones
(each ended by ``block_until_ready``), the step's FLOPs from XLA's cost analysis and the achieved
GFLOP/s, and, measured in the same process on the same device and dtype, a jitted square matmul's
GFLOP/s, so that ``efficiency = model GFLOP/s / matmul GFLOP/s``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from imixer_jax.models.registry import VARIANT_NAMES, create_model

DTYPES = ("float32", "bfloat16")


def _flops(compiled) -> float:
    """FLOPs of one call of an XLA executable (cost analysis is a dict or a list of dicts)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        return float(sum(c.get("flops", 0.0) for c in cost))
    return float(cost.get("flops", 0.0))


def _time_steps(run: Callable[[tuple], tuple], carry: tuple, warmup: int, steps: int) -> float:
    """Seconds for ``steps`` calls of ``carry = run(carry)`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        carry = run(carry)
    jax.block_until_ready(carry)
    start = time.perf_counter()
    for _ in range(steps):
        carry = run(carry)
    jax.block_until_ready(carry)
    return time.perf_counter() - start


def _compile(fn, *args, donate_argnums=()) -> tuple:
    """(compiled executable, lower + compile seconds)."""
    start = time.perf_counter()
    compiled = jax.jit(fn, donate_argnums=donate_argnums).lower(*args).compile()
    return compiled, time.perf_counter() - start


def matmul_gflops(size: int, dtype: str, *, warmup: int = 2, steps: int = 5) -> float:
    """Achieved GFLOP/s of a jitted ``[size, size] @ [size, size]`` matmul in ``dtype``."""
    a, b = jax.random.normal(jax.random.key(0), (2, size, size), jnp.dtype(dtype))
    compiled, _ = _compile(jnp.matmul, a, b)
    seconds = _time_steps(lambda c: (compiled(a, c[0]),), (b,), warmup, steps)
    return 2.0 * size**3 * steps / seconds / 1e9


def benchmark(
    model: str,
    *,
    batch: int,
    img_size: int = 224,
    num_classes: int = 1000,
    train: bool = False,
    steps: int = 10,
    warmup: int = 2,
    dtype: str = "float32",
    matmul_size: int = 2048,
    **overrides,
) -> dict:
    """Benchmark variant ``model`` (``overrides`` go to the registry); returns the report dict."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    if batch < 1 or steps < 1 or warmup < 0:
        raise ValueError(
            f"need batch >= 1, steps >= 1, warmup >= 0; got {batch}, {steps}, {warmup}"
        )
    kwargs = dict(num_classes=num_classes, img_size=img_size, dtype=dtype, **overrides)
    net = create_model(model, rngs=nnx.Rngs(params=0), **kwargs)
    num_params = sum(x.size for x in jax.tree.leaves(nnx.state(net, nnx.Param)))
    images = jax.random.uniform(
        jax.random.key(1), (batch, img_size, img_size, 3), minval=-1.0, maxval=1.0
    )
    labels = jax.random.randint(jax.random.key(2), (batch,), 0, num_classes)

    if train:
        net.train()
        graphdef, params, rest = nnx.split(net, nnx.Param, ...)
        tx = optax.adamw(1e-3, weight_decay=0.05)

        def train_step(params, rest, opt_state, key):
            key, dropout_key = jax.random.split(key)

            def loss_fn(params):
                m = nnx.merge(graphdef, params, rest, copy=True)
                logits = m(images, rngs=nnx.Rngs(dropout=dropout_key))
                loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                return loss, nnx.state(m, nnx.Not(nnx.Param))  # updated power-iteration vectors

            grads, rest = jax.grad(loss_fn, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), rest, opt_state, key

        carry = (params, rest, tx.init(params), jax.random.key(3))
        compiled, compile_s = _compile(train_step, *carry, donate_argnums=(0, 1, 2))
        run = lambda c: compiled(*c)
    else:
        net.eval()
        graphdef, state = nnx.split(net)
        compiled, compile_s = _compile(lambda s, x: nnx.merge(graphdef, s)(x), state, images)
        run = lambda c: (compiled(state, images),)
        carry = (jnp.zeros(()),)

    seconds = _time_steps(run, carry, warmup, steps)
    flops = _flops(compiled)
    model_gflops = flops * steps / seconds / 1e9
    reference = matmul_gflops(matmul_size, dtype)
    device = jax.devices()[0]
    return {
        "model": model,
        "mode": "train" if train else "eval",
        "batch": batch,
        "img_size": img_size,
        "num_classes": num_classes,
        "dtype": dtype,
        "params": num_params,
        "steps": steps,
        "compile_s": compile_s,
        "step_s": seconds / steps,
        "images_per_s": batch * steps / seconds,
        "gflops_per_step": flops / 1e9,
        "gflops_per_s": model_gflops,
        "matmul_size": matmul_size,
        "matmul_gflops_per_s": reference,
        "efficiency": model_gflops / reference,
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "jax_version": jax.__version__,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m imixer_jax.benchmark", description=__doc__)
    parser.add_argument("--model", required=True, choices=VARIANT_NAMES)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--train", action="store_true", help="time a full train step")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        report = benchmark(
            args.model,
            batch=args.batch,
            img_size=args.img_size,
            num_classes=args.num_classes,
            train=args.train,
            steps=args.steps,
            warmup=args.warmup,
            dtype=args.dtype,
            matmul_size=args.matmul_size,
        )
    except ValueError as e:
        parser.error(str(e))
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>20}: {value:.4g}" if isinstance(value, float) else f"{key:>20}: {value}")


if __name__ == "__main__":
    main()
