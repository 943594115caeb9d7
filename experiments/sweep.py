"""Run a named sweep (``experiments/catalog.py``), one ``imixer_jax.train`` command per run.

    python -m experiments.sweep --sweep NAME --dry_run [--root runs]  # one train command per run
    python -m experiments.sweep --sweep NAME --run [--root runs]      # run them in sequence
    python -m experiments.sweep --list                                 # sweeps and run counts

Run it from the repository root (config paths are relative to it). The workdir of a run is
``<root>/<NAME>/<run>``. ``--run`` skips finished runs (their ``metrics.jsonl`` holds the test
metrics of the last step of the schedule) and re-runs the others with the same command, which
resumes an interrupted run from its newest checkpoint (the trainer resumes from the workdir). The
wall time of every command is appended to ``<workdir>/sweep_log.jsonl``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from typing import Any

import ml_collections
from absl import flags

from experiments.catalog import SWEEPS, Run
from imixer_jax import cli

SWEEP_LOG = "sweep_log.jsonl"


def _format_value(value: Any) -> str:
    if isinstance(value, bool | int | str):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    raise TypeError(f"override value {value!r} is not a bool, int, float or str")


def check_name(name: str) -> None:
    """Raises ``cli.UsageError`` unless ``name`` is a sweep of the catalog."""
    if name not in SWEEPS:
        raise cli.UsageError(f"--sweep {name}: no such sweep; one of {', '.join(sorted(SWEEPS))}")


def command(run: Run, workdir: str, python: str = "python") -> list[str]:
    """The train command of ``run`` in ``workdir`` as an argv list."""
    overrides = [f"--config.{key}={_format_value(v)}" for key, v in run.overrides.items()]
    return [
        python,
        "-m",
        "imixer_jax.train",
        "--config",
        run.config,
        "--workdir",
        workdir,
        *overrides,
    ]


def workdir_of(root: str, sweep: str, run: Run) -> str:
    return os.path.join(root, sweep, run.name)


def total_steps(config: ml_collections.ConfigDict) -> int:
    """Steps of the whole schedule of ``config`` (needs the dataset's metadata)."""
    # TensorFlow comes with these: imported only here, so that --list and --dry_run stay fast.
    from imixer_jax import data
    from imixer_jax.training import optim

    info = data.dataset_info(
        config.data.name,
        data_dir=config.data.data_dir,
        train_split=config.data.train_split,
        eval_split=config.data.eval_split,
    )
    return optim.plan(config, info.num_train).total_steps


def final_metrics(workdir: str) -> dict[str, Any] | None:
    """Metrics logged at the last step of the schedule (``step``, ``test/top1``, ...), merged
    over the rows of that step, or None when the run has not finished."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not (os.path.exists(path) and os.path.exists(os.path.join(workdir, "config.json"))):
        return None
    from imixer_jax.analysis.runs import load_config  # TensorFlow: see total_steps
    from imixer_jax.training.logging.reader import read_jsonl

    last = total_steps(load_config(workdir))
    final: dict[str, Any] = {}
    for row in read_jsonl(path):
        if row["step"] == last:
            final.update(row)
    return final if "test/top1" in final else None


def status(workdir: str) -> str:
    """'finished', 'interrupted' (started: the command resumes it) or 'new'."""
    if final_metrics(workdir) is not None:
        return "finished"
    return "interrupted" if os.path.isdir(workdir) else "new"


def run_all(name: str, root: str) -> list[dict[str, Any]]:
    """Runs sweep ``name`` in sequence; returns one ``{'run', 'status', 'seconds'}`` per run.

    Raises:
      subprocess.CalledProcessError: a train command failed (the runs before it are kept).
    """
    results = []
    for run in SWEEPS[name]:
        workdir = workdir_of(root, name, run)
        before = status(workdir)
        if before == "finished":
            print(f"[skip] {run.name}: finished", flush=True)
            results.append({"run": run.name, "status": "skipped", "seconds": 0.0})
            continue
        argv = command(run, workdir, python=sys.executable)
        print(f"[{before}] {shlex.join(command(run, workdir))}", flush=True)
        start = time.time()
        subprocess.run(argv, check=True)
        seconds = time.time() - start
        with open(os.path.join(workdir, SWEEP_LOG), "a") as f:
            f.write(json.dumps({"command": shlex.join(argv[1:]), "seconds": seconds}) + "\n")
        print(f"[done] {run.name}: {seconds:.0f} s", flush=True)
        results.append({"run": run.name, "status": before, "seconds": seconds})
    return results


FLAGS = cli.flag_values()
_SWEEP = flags.DEFINE_string("sweep", None, "Sweep to run (--list lists them).", flag_values=FLAGS)
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the train commands.", flag_values=FLAGS)
_RUN = flags.DEFINE_bool("run", False, "Run them in sequence.", flag_values=FLAGS)
_LIST = flags.DEFINE_bool("list", False, "List the sweeps and run counts.", flag_values=FLAGS)
_ROOT = flags.DEFINE_string("root", "runs", "Root of the workdirs.", flag_values=FLAGS)
flags.mark_bool_flags_as_mutual_exclusive(
    ["dry_run", "run", "list"], required=True, flag_values=FLAGS
)


def main() -> None:
    name, root = _SWEEP.value, _ROOT.value
    if _LIST.value:
        for sweep, runs in SWEEPS.items():
            print(f"{sweep} {len(runs)}")
        return
    if name is None:
        raise cli.UsageError("--dry_run and --run need --sweep NAME; --list lists the names")
    check_name(name)
    if _DRY_RUN.value:
        for run in SWEEPS[name]:
            print(shlex.join(command(run, workdir_of(root, name, run))))
        return
    for run in SWEEPS[name]:
        config_file = run.config.split(":", 1)[0]
        if not os.path.exists(config_file):
            raise cli.UsageError(f"{config_file} not found; run from the repository root")
    start = time.time()
    try:
        results = run_all(name, root)
    except subprocess.CalledProcessError as e:
        raise cli.UsageError(
            f"a run failed (exit status {e.returncode}): {shlex.join(e.cmd)}; fix the cause it "
            "printed and rerun the sweep (finished runs are skipped, the failed one resumes)"
        ) from e
    ran = sum(r["status"] != "skipped" for r in results)
    print(f"sweep {name}: {ran} run(s) in {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    cli.run(main, FLAGS)
