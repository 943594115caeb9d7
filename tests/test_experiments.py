"""Paper configs, sweep definitions, the sweep runner (dry run, skip and resume) and the report."""

import json
import os
import shlex
import statistics

import pytest
from absl import flags
from ml_collections import config_flags

from configs import default, paper
from experiments import report, sweep
from experiments.catalog import SWEEPS, Run
from imixer_jax import cli, data
from imixer_jax.models import registry
from imixer_jax.training import config as config_lib
from tests.commands import call

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPECTED_RUNS = {
    "paper": 6,
    "n_iter": 5,
    "hidden_ratio": 3,
    "n_power": 4,
    "sn_coeff": 4,
    "spectral_norm": 2,
    "tied": 2,
    "adjoint": 3,
    "cpu_study": 15,
    "paramixer": 4,
    "paramixer_repeats": 12,
    "symmetry_breaking": 9,
}


def _parse(argv: list[str]):
    """The config a train command would run with: its --config and --config.KEY flags parsed
    exactly as imixer_jax.train parses them (config_flags), from the repository root."""
    args = ["train", f"--config={argv[argv.index('--config') + 1]}"]
    args += [a for a in argv if a.startswith("--config.")]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=values, lock_config=True, sys_argv=args
    )
    values(args)
    return values.config


# ---------------------------------------------------------------------------------------------
# Paper configs.


@pytest.mark.parametrize("dataset", sorted(paper.DATASETS))
@pytest.mark.parametrize("model", paper.PAPER_MODELS)
def test_paper_config_loads_and_validates(dataset, model, monkeypatch):
    monkeypatch.chdir(REPO)
    config = _parse(["--config", f"configs/{dataset}.py:{model}"])
    config_lib.validate(config)  # abstract model only (nnx.eval_shape): no real-size arrays
    num_classes, _ = paper.DATASETS[dataset]
    expected_model = registry.model_config(model, num_classes=num_classes, dtype="bfloat16")
    assert config.model.to_dict() == expected_model.to_dict()
    assert config.data.name == dataset
    # The official recipe (docs/recipe.md).
    assert config.batch_size == 2048 and config.optimizer.lr == 5e-4
    assert (config.schedule.length, config.schedule.warmup, config.schedule.cooldown) == (
        300.0,
        20.0,
        10.0,
    )
    assert config.model.drop_path_rate == 0.1 and config.model.img_size == 224
    assert config.data.augment.to_dict() == dict(data.AUGMENT_DEFAULTS)


@pytest.mark.parametrize("dataset", sorted(paper.DATASETS))
def test_paper_config_docstring_and_missing_model(dataset):
    module = __import__(f"configs.{dataset}", fromlist=["get_config"])
    doc = module.__doc__
    assert f"python -m imixer_jax.train --config configs/{dataset}.py:imixer_s16" in doc
    assert "Hardware:" in doc and "top-1" in doc
    with pytest.raises(ValueError, match=f"configs/{dataset}.py:imixer_s16"):
        module.get_config(None)


def test_cifar10_docstring_has_the_official_numbers():
    from configs import cifar10

    for number in ("88.56", "89.07", "87.48"):
        assert number in cifar10.__doc__


# ---------------------------------------------------------------------------------------------
# Sweeps: definitions and dry run.


def test_sweep_run_counts():
    assert {name: len(runs) for name, runs in SWEEPS.items()} == EXPECTED_RUNS
    for runs in SWEEPS.values():
        assert len({r.name for r in runs}) == len(runs)  # one workdir per run


def test_list(capsys):
    call(sweep, "--list")
    lines = capsys.readouterr().out.split("\n")
    assert [line.split() for line in lines if line] == [
        [name, str(n)] for name, n in EXPECTED_RUNS.items()
    ]


@pytest.mark.parametrize("name", sorted(EXPECTED_RUNS))
def test_dry_run_prints_one_valid_train_command_per_run(name, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    call(sweep, f"--sweep={name}", "--dry_run", "--root=/tmp/sweeps")
    lines = [line for line in capsys.readouterr().out.split("\n") if line]
    assert len(lines) == EXPECTED_RUNS[name]
    for line, run in zip(lines, SWEEPS[name]):
        argv = shlex.split(line)
        assert argv[:3] == ["python", "-m", "imixer_jax.train"]
        assert argv[3:7] == ["--config", run.config, "--workdir", f"/tmp/sweeps/{name}/{run.name}"]
        assert all(a.startswith("--config.") and "=" in a for a in argv[7:])
        config = _parse(argv)
        for key, value in run.overrides.items():  # every override reaches the config
            node = config
            for part in key.split("."):
                node = node[part]
            assert node == value, key
        if name != "paper":  # the paper configs are validated above, model by model
            config_lib.validate(config)


def test_cpu_study_has_equal_budgets_and_three_seeds(monkeypatch):
    monkeypatch.chdir(REPO)
    configs = [_parse(sweep.command(r, "w")) for r in SWEEPS["cpu_study"]]
    budgets = {
        (c.batch_size, c.schedule.to_json(), c.optimizer.to_json(), c.data.to_json())
        for c in configs
    }
    assert len(budgets) == 1
    seeds: dict[str, list[int]] = {}
    for run, config in zip(SWEEPS["cpu_study"], configs):
        seeds.setdefault(run.group, []).append(config.seed)
    assert seeds == {g: [0, 1, 2] for g in ("mixer", *(f"imixer_n{k}" for k in (0, 1, 2, 4)))}
    mixers = {r.group: c.model.token_mixer for r, c in zip(SWEEPS["cpu_study"], configs)}
    assert mixers["mixer"] == "mlp" and mixers["imixer_n4"] == "imlp"


# ---------------------------------------------------------------------------------------------
# Finished / interrupted / new, and the runner's skip logic.

TOTAL = 660  # default config: 30 epochs x (1,437 // 64) steps


def _fake_workdir(path, *, last_step: int, top1: float = 0.9, seed: int = 0) -> str:
    """A workdir as the trainer leaves it: config.json and metrics.jsonl up to ``last_step``."""
    os.makedirs(path, exist_ok=True)
    config = default.get_config()
    config.seed = seed
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    rows = [{"step": s, "train/loss": 1.0 / s} for s in range(50, last_step + 1, 50)]
    if last_step == TOTAL:
        rows += [
            {"step": TOTAL, "train/loss": 0.5},
            {"step": TOTAL, "test/top1": top1, "test/top5": 1.0, "test/loss": 0.2},
        ]
    else:  # an interrupted run: a periodic evaluation, but not at the final step
        rows += [{"step": last_step, "test/top1": 0.5, "test/top5": 0.9, "test/loss": 1.0}]
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def test_total_steps_of_the_default_config():
    assert sweep.total_steps(default.get_config()) == TOTAL


def test_status_and_final_metrics(tmp_path):
    finished = _fake_workdir(tmp_path / "a", last_step=TOTAL, top1=0.875)
    interrupted = _fake_workdir(tmp_path / "b", last_step=400)
    assert sweep.status(finished) == "finished"
    assert sweep.final_metrics(finished)["test/top1"] == 0.875
    assert sweep.status(interrupted) == "interrupted"
    assert sweep.final_metrics(interrupted) is None
    assert sweep.status(str(tmp_path / "c")) == "new"


FAKE_RUNS = [
    Run("done", "configs/default.py", {"seed": 0}),
    Run("half", "configs/default.py", {"seed": 1}),
    Run("fresh", "configs/default.py", {"seed": 2}),
]


def test_run_skips_finished_and_reruns_the_others(tmp_path, monkeypatch):
    monkeypatch.setitem(SWEEPS, "fake", FAKE_RUNS)
    _fake_workdir(tmp_path / "fake" / "done", last_step=TOTAL)
    _fake_workdir(tmp_path / "fake" / "half", last_step=400)
    calls = []

    def fake_run(argv, check):
        calls.append(argv)
        os.makedirs(argv[argv.index("--workdir") + 1], exist_ok=True)

    monkeypatch.setattr(sweep.subprocess, "run", fake_run)
    results = sweep.run_all("fake", str(tmp_path))
    assert [r["status"] for r in results] == ["skipped", "interrupted", "new"]
    # The interrupted run gets the very same command (the trainer resumes from its checkpoint).
    assert [c[c.index("--workdir") + 1] for c in calls] == [
        str(tmp_path / "fake" / "half"),
        str(tmp_path / "fake" / "fresh"),
    ]
    assert calls[0][1:3] == ["-m", "imixer_jax.train"] and "--config.seed=1" in calls[0]
    for run in ("half", "fresh"):
        with open(tmp_path / "fake" / run / sweep.SWEEP_LOG) as f:
            assert "seconds" in json.loads(f.readline())


def test_run_requires_the_repository_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(cli.UsageError, match="run from the repository root"):
        call(sweep, "--sweep=cpu_study", "--run", f"--root={tmp_path}")


# ---------------------------------------------------------------------------------------------
# Report.


def test_report_writes_table_plot_and_numbers(tmp_path, monkeypatch):
    runs = [Run(f"{g}_seed{s}", "configs/default.py", {"seed": s}, g) for g in "ab" for s in (0, 1)]
    runs.append(Run("c_seed0", "configs/default.py", {"seed": 0}, "c"))
    monkeypatch.setitem(SWEEPS, "fake", runs)
    monkeypatch.setitem(report.NOTES, "fake", "What the numbers do and do not show.")
    top1 = {"a_seed0": 0.90, "a_seed1": 0.94, "b_seed0": 0.80, "b_seed1": 0.84}
    for name, value in top1.items():
        _fake_workdir(tmp_path / "runs" / "fake" / name, last_step=TOTAL, top1=value)
    _fake_workdir(tmp_path / "runs" / "fake" / "c_seed0", last_step=400)  # not finished
    with open(tmp_path / "runs" / "fake" / "a_seed0" / sweep.SWEEP_LOG, "w") as f:
        f.write(json.dumps({"command": "x", "seconds": 60.0}) + "\n")

    call(report, "--sweep=fake", f"--root={tmp_path / 'runs'}", f"--out={tmp_path / 'out'}")
    md = (tmp_path / "out" / "fake.md").read_text()
    std = statistics.stdev([90.0, 94.0])
    se = (std**2 / 2 + std**2 / 2) ** 0.5
    assert f"| a | 2/2 | 92.00 +- {std:.2f} | - |" in md
    assert f"| b | 2/2 | 82.00 +- {std:.2f} | -10.00 +- {se:.2f} |" in md
    assert "| c | 0/1 | - | - |" in md and "not finished" in md
    assert "What the numbers do and do not show." in md
    assert "equal for every run: 660 steps of batch 64" in md
    assert "python -m experiments.sweep --sweep fake --run" in md
    png = tmp_path / "out" / "fake.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 200_000
    numbers = json.loads((tmp_path / "out" / "fake.json").read_text())
    assert [g["n"] for g in numbers["groups"]] == [2, 2, 0]
    assert numbers["groups"][0]["seconds_mean"] == 60.0
