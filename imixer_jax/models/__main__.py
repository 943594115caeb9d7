"""Print every registered variant's exact parameter count, one ``<name> <count>`` line each.

    python -m imixer_jax.models --num-classes 1000 [--img-size 224]

Counts come from abstract shapes (``jax.eval_shape``), so even the L variants cost no memory.
A bad argument ends it with one line ``error: <cause>; <fix>`` before any variant is printed.
"""

from __future__ import annotations

from imixer_jax import cli


def main(argv: list[str] | None = None) -> None:
    parser = cli.ArgumentParser(prog="python -m imixer_jax.models", description=__doc__)
    parser.add_argument("--num-classes", type=int, required=True)
    parser.add_argument("--img-size", type=int, default=224)
    args = parser.parse_args(argv)
    from imixer_jax.models.registry import VARIANT_NAMES, param_count  # after the setup

    counts = {}
    for name in VARIANT_NAMES:
        try:
            counts[name] = param_count(name, num_classes=args.num_classes, img_size=args.img_size)
        except ValueError as e:
            parser.error(str(e))
    for name, count in counts.items():
        print(f"{name} {count}", flush=True)


if __name__ == "__main__":
    cli.run_argparse(main)
