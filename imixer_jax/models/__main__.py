"""Print every registered variant's exact parameter count, one ``<name> <count>`` line each.

    python -m imixer_jax.models --num_classes 1000 [--img_size 224] [--table]

Every family is listed: MLP-Mixer (``mixer_*``), iMixer (``imixer_*``), the parallelized Mixer
family (``vanillamixer_*``, ``paramixer_*``, ``symmixer_*``, ``asymmixer_*``) and the Energy
Transformer (``energy_transformer_*``). ``--table``
prints a table instead, with each variant's family and analytic forward GFLOPs per image
(``models.flops``). Counts come from abstract shapes (``jax.eval_shape``), so even the L variants
cost no memory. A bad argument ends it with one line ``error: <cause>; <fix>`` before any variant
is printed.
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
_TABLE = flags.DEFINE_bool(
    "table", False, "A table with family and forward GFLOPs per image.", flag_values=FLAGS
)


def main() -> None:
    from imixer_jax.models import flops, registry  # after the setup

    rows = []
    names = (*registry.VARIANT_NAMES, *registry.PARAMIXER_NAMES, *registry.ENERGY_TRANSFORMER_NAMES)
    for name in names:
        try:
            config = registry.model_config(
                name, num_classes=_NUM_CLASSES.value, img_size=_IMG_SIZE.value
            )
        except ValueError as e:
            raise cli.UsageError(f"{e}; see --help") from e
        # The stacked (scanned) layout has the same parameters and traces one block, not N.
        layout = config.replace(scan_blocks=True) if config.arch == "mixer" else config
        family = config.arch if config.arch == "energy_transformer" else name.split("_")[0]
        rows.append((name, family, registry.count_params(layout), config))
    if not _TABLE.value:
        for name, _, count, _ in rows:
            print(f"{name} {count}", flush=True)
        return
    width = max(len(name) for name, *_ in rows)
    family_width = max(len(family) for _, family, *_ in rows)
    print(f"{'name':<{width}}  {'family':<{family_width}}  {'params':>11}  {'GFLOPs/image':>12}")
    for name, family, count, config in rows:
        gflops = flops.forward_flops(config) / 1e9
        print(
            f"{name:<{width}}  {family:<{family_width}}  {count:>11}  {gflops:>12.2f}", flush=True
        )


if __name__ == "__main__":
    cli.run(main, FLAGS)
