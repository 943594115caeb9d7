"""The paper's configs at pod scale: per-chip memory and FLOPs of the trainer's train and eval
steps at the official global batch (``configs/cifar10.py``: 2048, bfloat16), compiled ahead of
time for TPU topologies on this machine.

    python -m benchmarks.pod_scale [--results=benchmarks/results/pod_scale.jsonl]
        [--table=docs/pod_scale.md] [--jobs=1] [--only=MODEL ...] [--topologies=T ...]
        [--meshes=DxM ...] [--no_compile]

Each row is one ``python -m imixer_jax.aot --config configs/cifar10.py:MODEL --topology T
--config.mesh.shape='(d, m)' --json`` process (its memory is returned when it ends); its report is
appended to the results file with the commit it was compiled at, and rows already there are not
compiled again (delete a line to redo it). The markdown table between the markers of ``--table``
is then rewritten from the results. Every figure comes from XLA's compiler; none is a measured
TPU time. Needs libtpu (``pip install -e ".[tpu]"``).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
import sys
import threading

from absl import flags

from imixer_jax import cli

MODELS = (
    "mixer_s16",
    "imixer_s16",
    "mixer_b16",
    "imixer_b16",
    "mixer_l16",
    "imixer_l16",
    "paramixer_s16_224",
    "vanillamixer_s16_224",
)
# (model, topology, (data, model) mesh, config overrides), most telling first (a compile takes
# minutes on the 2-core CPU): every model data-parallel on both topologies, then the model axes,
# then the settings that shrink a step that does not fit: ZeRO/FSDP state, accumulation and
# recomputed activations.
FSDP = ("--config.mesh.fsdp=True",)
# Gradient accumulation over k micro-steps of batch / k: the same global batch per update, 1/k of
# the activations per step (``accum_steps`` counts the steps of one update; each step is one batch).
HALF_BATCH = ("--config.batch_size=1024", "--config.optimizer.accum_steps=2")
RECOMPUTE_ACTIVATIONS = ("--config.model.remat=activations",)
ROWS = (
    *((m, t, (16, 1), ()) for t in ("v5e:4x4", "v5p:2x2x4") for m in MODELS),
    *(
        (m, "v5e:4x4", (4, 4), ())
        for m in ("imixer_s16", "imixer_b16", "paramixer_s16_224", "vanillamixer_s16_224")
    ),
    *((m, "v5p:2x2x4", (4, 4), ()) for m in ("imixer_l16",)),
    ("imixer_l16", "v5e:4x4", (16, 1), FSDP),
    ("imixer_l16", "v5e:4x4", (16, 1), RECOMPUTE_ACTIVATIONS),
    ("imixer_l16", "v5e:4x4", (16, 1), HALF_BATCH),
    ("imixer_l16", "v5e:4x4", (16, 1), FSDP + HALF_BATCH),
)

BEGIN, END = "<!-- pod_scale table: begin -->", "<!-- pod_scale table: end -->"
GiB = 2**30


def key(model: str, topology: str, mesh: tuple[int, int], overrides: tuple[str, ...] = ()) -> str:
    return " ".join([model, topology, f"{mesh[0]}x{mesh[1]}", *overrides])


def compile_row(
    model: str, topology: str, mesh: tuple[int, int], overrides: tuple[str, ...]
) -> dict:
    """The ``--json`` report of one row, or ``{'error': <its one line>}``."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "imixer_jax.aot",
            f"--config=configs/cifar10.py:{model}",
            f"--topology={topology}",
            f"--config.mesh.shape=({mesh[0]}, {mesh[1]})",
            *overrides,
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(out.stdout)


def load(path: str) -> dict[str, dict]:
    """Results by row key."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {row["key"]: row for row in rows}


def _refusal(program: dict) -> str | None:
    """'XLA: 27.66G needed, 15.75G free' from XLA's out-of-memory line (the line itself where its
    wording differs); None for a program that fits."""
    line = program.get("out_of_memory")
    if line is None:
        return None
    match = re.search(r"for (.+?) \(([\d.]+\w)\) exceeds available HBM \(([\d.]+\w)\)", line)
    if match is None:
        return f"XLA: {line}"
    return f"XLA: {match.group(1)} {match.group(2)} > {match.group(3)} free"


def table(results: dict[str, dict]) -> str:
    """The markdown table of the rows in ``ROWS`` order (rows not compiled yet left out)."""
    lines = [
        "| model | topology | mesh (data, model) | settings | train state | temporaries | peak "
        "| HBM | fits | TFLOP per chip: XLA / analytic | compile s (train + eval) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    missing = []
    for model, topology, mesh, overrides in ROWS:
        r = results.get(key(model, topology, mesh, overrides))
        settings = ", ".join(o.removeprefix("--config.") for o in overrides) or "-"
        if r is None:
            missing.append(f"{model} on {topology} ({mesh[0]}, {mesh[1]}) {settings}".strip(" -"))
            continue
        head = f"| {model} | {topology} | ({mesh[0]}, {mesh[1]}) | {settings} |"
        if "error" in r:
            lines.append(f"{head} {r['error']} |||||||")
            continue
        train, evaluation = r["train"], r["eval"]
        compile_s = f"{train['compile_s']:.0f} + {evaluation['compile_s']:.0f}"
        state = f"{r['state_bytes'] / GiB:.2f} GiB"
        if r["peak_bytes"] is None:  # XLA refused a step as larger than the chip's HBM
            lines.append(
                f"{head} {state} | {_refusal(train) or _refusal(evaluation)} | - "
                f"| {r['hbm_label']} | **no** | - | {compile_s} |"
            )
            continue
        lines.append(
            f"{head} {state} | {train['temp_bytes'] / GiB:.2f} GiB "
            f"| **{r['peak_bytes'] / GiB:.2f} GiB** | {r['hbm_label']} "
            f"| {'yes' if r['fits'] else '**no**'} "
            f"| {train['xla_flops'] / 1e12:.2f} / {train['analytic_flops'] / 1e12:.2f} "
            f"| {compile_s} |"
        )
    if missing:
        lines += ["", f"Not compiled yet (`python -m benchmarks.pod_scale`): {'; '.join(missing)}."]
    return "\n".join(lines)


def write_table(path: str, results: dict[str, dict]) -> None:
    """Replace the text between ``BEGIN`` and ``END`` in ``path`` by the table."""
    with open(path) as f:
        text = f.read()
    if BEGIN not in text or END not in text:
        raise cli.UsageError(
            f"{path} has no {BEGIN} ... {END} markers; add them where the table goes"
        )
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    with open(path, "w") as f:
        f.write(f"{head}{BEGIN}\n{table(results)}\n{END}{tail}")


FLAGS = cli.flag_values()
_RESULTS = flags.DEFINE_string(
    "results", "benchmarks/results/pod_scale.jsonl", "Results file (JSON lines).", flag_values=FLAGS
)
_TABLE = flags.DEFINE_string(
    "table", "docs/pod_scale.md", "Markdown file whose table is rewritten.", flag_values=FLAGS
)
_JOBS = flags.DEFINE_integer("jobs", 1, "Rows compiled at once.", lower_bound=1, flag_values=FLAGS)
_ONLY = flags.DEFINE_multi_enum(
    "only", None, MODELS, "Compile only these models.", flag_values=FLAGS
)
_TOPOLOGIES = flags.DEFINE_multi_string(
    "topologies", None, "Compile only the rows of these topologies.", flag_values=FLAGS
)
_MESHES = flags.DEFINE_multi_string(
    "meshes", None, "Compile only the rows of these meshes, e.g. 16x1.", flag_values=FLAGS
)
_NO_COMPILE = flags.DEFINE_bool(
    "no_compile", False, "Only rewrite the table from the results.", flag_values=FLAGS
)


def main() -> None:
    results = load(_RESULTS.value)
    todo = [
        row
        for row in ROWS
        if key(*row) not in results
        and (not _ONLY.value or row[0] in _ONLY.value)
        and (not _TOPOLOGIES.value or row[1] in _TOPOLOGIES.value)
        and (not _MESHES.value or f"{row[2][0]}x{row[2][1]}" in _MESHES.value)
        and not _NO_COMPILE.value
    ]
    os.makedirs(os.path.dirname(_RESULTS.value) or ".", exist_ok=True)
    lock = threading.Lock()
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True
    ).stdout.strip()

    def run(row):
        report = {"key": key(*row), "commit": commit, **compile_row(*row)}
        with lock, open(_RESULTS.value, "a") as f:
            f.write(json.dumps(report) + "\n")
        print(report["key"], report.get("error") or f"fits: {report['fits']}", flush=True)

    with concurrent.futures.ThreadPoolExecutor(_JOBS.value) as pool:
        list(pool.map(run, todo))
    write_table(_TABLE.value, load(_RESULTS.value))


if __name__ == "__main__":
    cli.run(main, FLAGS)
