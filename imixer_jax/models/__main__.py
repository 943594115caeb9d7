"""Print every registered variant's exact parameter count, one ``<name> <count>`` line each.

    python -m imixer_jax.models --num_classes 1000 [--img_size 224]

Counts come from abstract shapes (``jax.eval_shape``), so even the L variants cost no memory.
A bad argument ends it with one line ``error: <cause>; <fix>`` before any variant is printed.
"""

from __future__ import annotations

from absl import flags

from imixer_jax import cli

FLAGS = cli.flag_values()
_NUM_CLASSES = flags.DEFINE_integer(
    "num_classes", None, "Classes of the head.", lower_bound=1, required=True, flag_values=FLAGS
)
_IMG_SIZE = flags.DEFINE_integer(
    "img_size", 224, "Input image size in pixels.", lower_bound=1, flag_values=FLAGS
)


def main() -> None:
    from imixer_jax.models.registry import VARIANT_NAMES, param_count  # after the setup

    try:
        counts = {
            name: param_count(name, num_classes=_NUM_CLASSES.value, img_size=_IMG_SIZE.value)
            for name in VARIANT_NAMES
        }
    except ValueError as e:
        raise cli.UsageError(f"{e}; see --help") from e
    for name, count in counts.items():
        print(f"{name} {count}", flush=True)


if __name__ == "__main__":
    cli.run(main, FLAGS)
