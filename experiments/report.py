"""Collect the final metrics of a sweep's workdirs into a markdown table and a PNG plot.

    python -m experiments.report --sweep NAME [--root runs] [--out DIR]

writes ``DIR/NAME.md`` (test top-1 mean +- std per group over its seeds, then every run),
``DIR/NAME.png`` (the same numbers) and ``DIR/NAME.json`` (the numbers); ``DIR`` defaults to
``<root>/<NAME>``. Unfinished runs are listed as such and left out of the means; with no
finished run it writes nothing and exits with one line ``error: ...`` (status 1).
"""

from __future__ import annotations

import json
import math
import os
import statistics
from typing import Any

from absl import flags

from experiments import sweep
from experiments.catalog import NOTES, SWEEPS
from imixer_jax import cli


def collect(name: str, root: str) -> list[dict[str, Any]]:
    """One row per run of sweep ``name``: ``run``, ``group``, ``seed``, ``finished``, and for
    finished runs ``top1``, ``top5``, ``loss`` (test, in percent for the accuracies), ``steps``,
    ``batch_size``, ``params`` and ``seconds`` (wall time of the sweep's commands, when logged)."""
    rows = []
    for run in SWEEPS[name]:
        workdir = sweep.workdir_of(root, name, run)
        final = sweep.final_metrics(workdir)
        row: dict[str, Any] = {"run": run.name, "group": run.group, "finished": final is not None}
        if final is not None:
            from imixer_jax.analysis.runs import load_config  # TensorFlow: only with a run
            from imixer_jax.models import registry
            from imixer_jax.training import config as config_lib

            config = load_config(workdir)
            row.update(
                seed=config.seed,
                top1=100.0 * final["test/top1"],
                top5=100.0 * final["test/top5"],
                loss=final["test/loss"],
                steps=final["step"],
                batch_size=config.batch_size,
                params=registry.count_params(config_lib.typed_model_config(config)),
                seconds=_logged_seconds(workdir),
            )
        rows.append(row)
    return rows


def _logged_seconds(workdir: str) -> float | None:
    path = os.path.join(workdir, sweep.SWEEP_LOG)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return sum(json.loads(line)["seconds"] for line in f if line.strip())


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per group (in sweep order): ``n`` finished runs of ``total``, ``top1_mean``, ``top1_std``
    (sample standard deviation over seeds; 0 for a single run) and ``params``."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    out = []
    for group, members in groups.items():
        done = [r for r in members if r["finished"]]
        top1 = [r["top1"] for r in done]
        out.append(
            dict(
                group=group,
                n=len(done),
                total=len(members),
                top1_mean=statistics.mean(top1) if top1 else None,
                top1_std=statistics.stdev(top1) if len(top1) > 1 else 0.0,
                params=done[0]["params"] if done else None,
                seconds_mean=_mean([r["seconds"] for r in done if r["seconds"] is not None]),
            )
        )
    return out


def _mean(values: list[float]) -> float | None:
    return statistics.mean(values) if values else None


def _budget(rows: list[dict[str, Any]]) -> str:
    budgets = {(r["steps"], r["batch_size"]) for r in rows if r["finished"]}
    if not budgets:
        return "no finished runs yet"
    if len(budgets) == 1:
        steps, batch = budgets.pop()
        return f"equal for every run: {steps} steps of batch {batch}"
    listed = ", ".join(f"{s} steps x {b}" for s, b in sorted(budgets))
    return f"NOT equal across runs: {listed}"


def _versus_first(group: dict[str, Any], first: dict[str, Any]) -> str:
    """Difference of the group's mean top-1 from the first group's, with its standard error
    sqrt(s1^2 / n1 + s2^2 / n2) when both groups have several seeds."""
    if group is first or group["n"] == 0 or first["n"] == 0:
        return "-"
    diff = group["top1_mean"] - first["top1_mean"]
    if group["n"] < 2 or first["n"] < 2:
        return f"{diff:+.2f}"
    se = math.sqrt(group["top1_std"] ** 2 / group["n"] + first["top1_std"] ** 2 / first["n"])
    return f"{diff:+.2f} +- {se:.2f}"


def markdown(name: str, rows, summary, root: str, out: str) -> str:
    """The report of sweep ``name`` as markdown."""
    seeds = max(g["total"] for g in summary)
    lines = [
        f"# Sweep `{name}`",
        "",
        "Regenerate (from the repository root):",
        "",
        "```bash",
        f"python -m experiments.sweep --sweep {name} --run --root {root} && "
        f"python -m experiments.report --sweep {name} --root {root} --out {out}",
        "```",
        "",
        f"Budget: {_budget(rows)}.",
        "",
        f"| group | finished | test top-1 (%) | vs {summary[0]['group']} | params "
        "| wall time per run (s) |",
        "|---|---|---|---|---|---|",
    ]
    for g in summary:
        top1 = "-" if g["n"] == 0 else f"{g['top1_mean']:.2f}"
        if g["n"] > 1:
            top1 += f" +- {g['top1_std']:.2f}"
        params = "-" if g["params"] is None else f"{g['params']:,}"
        seconds = "-" if g["seconds_mean"] is None else f"{g['seconds_mean']:.0f}"
        versus = _versus_first(g, summary[0])
        lines.append(
            f"| {g['group']} | {g['n']}/{g['total']} | {top1} | {versus} | {params} | {seconds} |"
        )
    lines += [""]
    if seeds > 1:
        lines += [
            "Mean +- sample standard deviation over seeds; the difference from the first group "
            "+- its standard error.",
            "",
        ]
    lines += [NOTES[name], ""]
    lines += ["| run | seed | test top-1 (%) | test top-5 (%) | test loss | steps |"]
    lines += ["|---|---|---|---|---|---|"]
    for r in rows:
        if r["finished"]:
            lines.append(
                f"| {r['run']} | {r['seed']} | {r['top1']:.2f} | {r['top5']:.2f} | "
                f"{r['loss']:.4f} | {r['steps']} |"
            )
        else:
            lines.append(f"| {r['run']} | - | not finished | | | |")
    total = sum(r["seconds"] or 0.0 for r in rows if r["finished"])
    if total:
        lines += ["", f"Total wall time of the finished runs: {total / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def plot(name: str, rows, summary, path: str) -> None:
    """Test top-1 per group: mean +- std (bars) and every seed (dots)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.0, 1.1 * len(summary) + 1.5), 3.2), dpi=100)
    ax = fig.subplots()
    positions = {g["group"]: i for i, g in enumerate(summary)}
    done = [g for g in summary if g["n"] > 0]
    ax.errorbar(
        [positions[g["group"]] for g in done],
        [g["top1_mean"] for g in done],
        yerr=[g["top1_std"] for g in done],
        fmt="o",
        color="black",
        capsize=4,
        label="mean +- std",
    )
    seeds = [r for r in rows if r["finished"]]
    ax.scatter(
        [positions[r["group"]] + 0.12 for r in seeds],
        [r["top1"] for r in seeds],
        s=12,
        color="tab:blue",
        alpha=0.7,
        label="single run",
    )
    ax.set_xticks(range(len(summary)), [g["group"] for g in summary], rotation=20)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"sweep {name}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def report(name: str, root: str, out: str) -> dict[str, str]:
    """Writes ``out/name.{md,png,json}``; returns their paths.

    Raises:
      cli.UsageError: no run of the sweep has finished (nothing is written).
    """
    rows = collect(name, root)
    if not any(row["finished"] for row in rows):
        started = sum(os.path.isdir(sweep.workdir_of(root, name, run)) for run in SWEEPS[name])
        raise cli.UsageError(
            f"no finished run of sweep {name} in {os.path.join(root, name)} ({started} of "
            f"{len(rows)} started); run python -m experiments.sweep --sweep {name} --run "
            f"--root {root}"
        )
    summary = summarize(rows)
    os.makedirs(out, exist_ok=True)
    paths = {ext: os.path.join(out, f"{name}.{ext}") for ext in ("md", "png", "json")}
    with open(paths["md"], "w") as f:
        f.write(markdown(name, rows, summary, root, out))
    plot(name, rows, summary, paths["png"])
    with open(paths["json"], "w") as f:
        json.dump({"groups": summary, "runs": rows}, f, indent=1, sort_keys=True)
        f.write("\n")
    return paths


FLAGS = cli.flag_values()
_SWEEP = flags.DEFINE_string("sweep", None, "Sweep to report.", flag_values=FLAGS)
_ROOT = flags.DEFINE_string("root", "runs", "Root of the workdirs.", flag_values=FLAGS)
_OUT = flags.DEFINE_string(
    "out", None, "Output directory (default: ROOT/SWEEP).", flag_values=FLAGS
)
flags.mark_flag_as_required("sweep", flag_values=FLAGS)


def main() -> None:
    sweep.check_name(_SWEEP.value)
    out = _OUT.value or os.path.join(_ROOT.value, _SWEEP.value)
    for path in report(_SWEEP.value, _ROOT.value, out).values():
        print(path)


if __name__ == "__main__":
    cli.run(main, FLAGS)
