"""Compile the trainer's train and eval steps for a TPU topology on this machine (no TPU needed):
``python -m imixer_jax.aot --config configs/FILE.py[:ARG] --topology v5e:4x4
[--config.KEY=VALUE ...] [--json] [--verbose]``.

Prints, per chip, XLA's bytes of both steps (arguments, outputs, donated, temporaries, code),
their peak against the chip's HBM, XLA's and the analytic FLOPs, the compile seconds and how the
parameters are split over the mesh (``imixer_jax.training.aot``). Every figure comes from the
compiler; none is a measured TPU time. ``--json`` prints one JSON object instead.

Needs libtpu: ``pip install -e ".[tpu]"``. An unknown topology, a mesh that does not fit its
chips, a bad config or missing libtpu ends it with one line ``error: <cause>; <fix>`` before
anything compiles.
"""

from __future__ import annotations

import json

from absl import flags
from ml_collections import config_flags

from imixer_jax import cli

FLAGS = cli.flag_values()
_CONFIG = cli.define_config("Training config file (configs/*.py), optionally with :ARG.", FLAGS)
_TOPOLOGY = flags.DEFINE_string(
    "topology",
    None,
    "TPU topology: <generation>:<chips per axis>, e.g. v5e:4x4.",
    required=True,
    flag_values=FLAGS,
)
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object.", flag_values=FLAGS)


def _bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _flop(n: float) -> str:
    return f"{n / 1e12:.2f} T" if n >= 1e12 else f"{n / 1e9:.2f} G"


def _text(report, label: str) -> str:
    """The report as a table for a terminal."""
    r, train, evaluation = report, report.train, report.eval
    lines = [
        f"{label} on {r.topology}: {r.chips} x {r.device_kind}, {r.hbm_label} HBM per chip "
        f"({r.hbm_source})",
        f"mesh {' x '.join(f'{k}={v}' for k, v in r.mesh.items())}, global batch {r.batch_size} "
        f"(eval {r.eval_batch_size}), {r.dtype}, {r.params:,} parameters; "
        f"train state {_bytes(r.state_bytes)} per chip",
        "",
        f"{'per chip (XLA, ahead of time)':<32}{'train step':>12}{'eval step':>12}",
    ]
    rows = [
        ("arguments", "argument_bytes", _bytes),
        ("outputs", "output_bytes", _bytes),
        ("donated (aliased)", "alias_bytes", _bytes),
        ("temporaries", "temp_bytes", _bytes),
        ("code", "code_bytes", _bytes),
        ("peak", "peak_bytes", _bytes),
        ("XLA FLOP per step", "xla_flops", _flop),
        ("analytic FLOP per step", "analytic_flops", _flop),
        ("compile s (this machine)", "compile_s", lambda v: f"{v:.1f}"),
    ]
    for name, key, fmt in rows:
        cells = [getattr(program, key) for program in (train, evaluation)]
        cells = ["-" if v is None else fmt(v) for v in cells]
        lines.append(f"{name:<32}{cells[0]:>12}{cells[1]:>12}")
    lines.append("")
    if r.peak_bytes is None:
        for step, program in (("train", train), ("eval", evaluation)):
            if program.out_of_memory:
                lines.append(f"does NOT fit: the {step} step, XLA: {program.out_of_memory}")
    else:
        verdict = "fits" if r.fits else "does NOT fit"
        percent = 100 * r.peak_bytes / r.hbm_bytes
        lines.append(f"peak {_bytes(r.peak_bytes)} of {r.hbm_label}: {verdict} ({percent:.0f}%)")
    lines += ["", "parameter layout (dimensions' mesh axes; blocks as *):"]
    for group, group_rows in r.layout.items():
        size = sum(row["size"] for row in group_rows)
        lines.append(f"  {group}: {size:,} elements")
        for row in group_rows:
            spec = ", ".join(str(a) for a in row["spec"])
            lines.append(f"    {row['name']:<44} ({spec})  x{row['arrays']}")
    return "\n".join(lines)


def main() -> None:
    import jax

    from imixer_jax.training import aot  # after cli.setup_process (TensorFlow's log level)

    # Off before anything compiles (JAX decides once per process): this process cannot load a
    # cached program for a topology back (JAX warns on every read), and a hit would hide the
    # compile seconds reported.
    jax.config.update("jax_enable_compilation_cache", False)

    report = aot.compile_for_topology(_CONFIG.value, _TOPOLOGY.value)
    label = config_flags.get_config_filename(FLAGS[_CONFIG.name])
    if _JSON.value:
        print(json.dumps({"config": label, **report.to_dict()}))
    else:
        print(_text(report, label))


if __name__ == "__main__":
    cli.run(main, FLAGS)
