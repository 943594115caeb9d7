"""Print every registered variant's exact parameter count, one ``<name> <count>`` line each.

    python -m imixer_jax.models --num-classes 1000 [--img-size 224]

Counts come from abstract shapes (``jax.eval_shape``), so even the L variants cost no memory.
"""

from __future__ import annotations

import argparse

from imixer_jax.models.registry import VARIANT_NAMES, param_count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m imixer_jax.models", description=__doc__)
    parser.add_argument("--num-classes", type=int, required=True)
    parser.add_argument("--img-size", type=int, default=224)
    args = parser.parse_args(argv)
    for name in VARIANT_NAMES:
        try:
            count = param_count(name, num_classes=args.num_classes, img_size=args.img_size)
        except ValueError as e:
            parser.error(str(e))
        print(f"{name} {count}", flush=True)


if __name__ == "__main__":
    main()
