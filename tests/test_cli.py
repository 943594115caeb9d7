"""imixer_jax.cli: every entry point answers a bad input with exactly one line
``error: <cause>; <fix>`` on stderr and a non-zero status, before compiling anything and without
creating directories; ``--verbose`` / ``IMIXER_VERBOSE=1`` show the traceback instead."""

import importlib
import os
import subprocess
import sys

import pytest
from absl import flags, logging
from ml_collections import config_flags

from imixer_jax import cli
from imixer_jax.cli import app as cli_app

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/default.py"
NOT_FOUND = "No such file or directory"


def _start(module: str, *args: str, env: dict | None = None) -> subprocess.Popen:
    """``python -m module args`` from the repository root; JAX logs every compilation."""
    environ = {k: v for k, v in os.environ.items() if k != cli.errors.VERBOSE_ENV}
    environ.update({"JAX_LOG_COMPILES": "1", **(env or {})})
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _read_only_dir(tmp_path) -> str:
    """A directory this process cannot write: chmod 555, or for root (whom permission bits do
    not stop) sysfs, where even root cannot create files."""
    if os.geteuid() != 0:
        path = tmp_path / "read_only"
        path.mkdir()
        path.chmod(0o555)
        return str(path / "run")
    if not os.path.isdir("/sys/kernel"):
        pytest.skip("running as root without sysfs: no read-only directory to test with")
    return "/sys/imixer_jax_cli_test/run"


def _check_one_line(name: str, process: subprocess.Popen, expected: str) -> None:
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 1, (name, stderr[-3000:])
    assert "Compiling" not in stderr, name  # JAX_LOG_COMPILES logs every compilation
    # JAX_LOG_COMPILES also logs slow traces: the config check builds the model abstractly.
    lines = [line for line in stderr.strip().splitlines() if "Finished tracing" not in line]
    # Exactly one line: no traceback, no library log lines.
    assert len(lines) == 1, (name, stderr[-3000:])
    assert lines[0].startswith("error: ") and expected in lines[0], (name, lines[0])
    assert "; " in lines[0], (name, lines[0])  # "<cause>; <fix>"


@pytest.mark.slow
def test_every_bad_input_is_one_line_before_any_compilation(tmp_path):
    bad_syntax = tmp_path / "bad_syntax.py"
    bad_syntax.write_text("def get_config(:\n")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(os.urandom(4096))
    no_function = tmp_path / "constants.py"
    no_function.write_text("BATCH = 128\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    w = str(tmp_path / "w")
    train = ("--config", CONFIG, "--workdir")
    cases = {  # name: (module, arguments, environment, what the line must contain)
        "missing config file": (
            "imixer_jax.train",
            ["--config", "configs/nope.py", "--workdir", w],
            None,
            f"cannot load config file configs/nope.py ({NOT_FOUND}",
        ),
        "config syntax error": (
            "imixer_jax.train",
            ["--config", str(bad_syntax), "--workdir", w],
            None,
            f"{bad_syntax}:1: invalid syntax",
        ),
        "config without get_config": (
            "imixer_jax.train",
            ["--config", str(no_function), "--workdir", w],
            None,
            f"config file {no_function} defines no get_config()",
        ),
        "workdir is a file": (
            "imixer_jax.train",
            [*train, str(a_file)],
            None,
            f"--workdir {a_file} is a file, not a directory",
        ),
        "read-only workdir": (
            "imixer_jax.train",
            [*train, _read_only_dir(tmp_path)],
            None,
            "is not writable",
        ),
        "misspelt key": (
            "imixer_jax.train",
            [*train, w, "--config.model.n_iters=3"],
            None,
            "unknown config key config.model.n_iters (from --config.model.n_iters=3); "
            "did you mean config.model.n_iter?",
        ),
        "unknown dataset": (
            "imixer_jax.train",
            [*train, w, "--config.data.name=cifar11"],
            None,
            "TFDS has no dataset 'cifar11'; did you mean",
        ),
        "augmentation": (
            "imixer_jax.train",
            [*train, w, "--config.data.augment.scale=(0.5,)"],
            None,
            "config.data.augment.scale: got (0.5,); give a pair (low, high)",
        ),
        "RandAugment typo": (
            "imixer_jax.train",
            [*train, w, "--config.data.augment.randaugment=rand-zz"],
            None,
            "config.data.augment.randaugment: RandAugment section 'zz'",
        ),
        "mesh axes unquoted": (
            "imixer_jax.train",
            [*train, w, "--config.mesh.axes=(data,model)"],
            None,
            "config.mesh.axes: must be a tuple of axis names",
        ),
        "init_from random bytes": (
            "imixer_jax.train",
            [*train, w, "--config.data.name=synthetic/10", f"--config.init_from.path={junk}"],
            None,
            f"config.init_from.path: '{junk}' is neither an .npz nor a PyTorch file",
        ),
        "stray argument": ("imixer_jax.train", [*train, w, "extra"], None, "extra"),
        "evaluate: no workdir": (
            "imixer_jax.evaluate",
            [*train, str(tmp_path / "nothing" / "here")],
            None,
            "does not exist",
        ),
        "evaluate: not a run": ("imixer_jax.evaluate", [*train, w], None, "has no checkpoints/"),
        "analyze: no flags": ("imixer_jax.analyze", [], None, "--workdir is required"),
    }
    os.makedirs(w)  # an empty directory: evaluate must not create checkpoints/ in it
    # Side by side, four at a time: each process only imports and parses (a few CPU seconds).
    names = list(cases)
    for start in range(0, len(names), 4):
        batch = {n: _start(cases[n][0], *cases[n][1], env=cases[n][2]) for n in names[start:][:4]}
        for name, process in batch.items():
            _check_one_line(name, process, cases[name][3])
    assert os.listdir(w) == []  # nothing created: not by train, evaluate or analyze
    assert not os.path.exists(tmp_path / "nothing")


def test_verbose_flag_and_environment_show_the_traceback(tmp_path):
    args = ("--config", "configs/nope.py", "--workdir", str(tmp_path / "w"))
    processes = [
        _start("imixer_jax.train", *args, "--verbose"),
        _start("imixer_jax.train", *args, env={cli.errors.VERBOSE_ENV: "1"}),
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode != 0
        assert "Traceback (most recent call last)" in stderr and NOT_FOUND in stderr


# ---------------------------------------------------------------------------------------------
# Parsing, in process.


def _parse_error(argv: list[str]) -> BaseException:
    """The exception ml_collections raises for ``argv`` (flags defined as the entry points do)."""
    values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=values, lock_config=True, sys_argv=argv
    )
    with pytest.raises(Exception) as info:
        values(argv)
    return info.value


def test_misspelt_key_keeps_the_did_you_mean_hint(monkeypatch):
    monkeypatch.chdir(REPO)
    argv = ["train", f"--config={CONFIG}", "--config.model.n_iters=3"]
    assert cli.flag_error_line(_parse_error(argv), argv) == (
        "unknown config key config.model.n_iters (from --config.model.n_iters=3); "
        "did you mean config.model.n_iter?"
    )
    argv = ["train", f"--config={CONFIG}", "--config.modl.n_iter=3"]
    assert cli.flag_error_line(_parse_error(argv), argv) == (
        "unknown config key config.modl.n_iter (from --config.modl.n_iter=3); "
        "did you mean config.model.n_iter?"
    )
    argv = ["train", f"--config={CONFIG}", "--config.model.depth=3"]  # nothing close
    assert cli.flag_error_line(_parse_error(argv), argv) == (
        "unknown config key config.model.depth (from --config.model.depth=3); "
        "check the key against the config file"
    )


def test_config_file_errors_name_the_file_and_the_cause(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    argv = ["train", "--config=configs/cifar10.py:nope"]  # get_config raises ValueError
    line = cli.flag_error_line(_parse_error(argv), argv)
    assert line.startswith("flag --config=configs/cifar10.py:nope: ValueError: ")
    assert "\n" not in line
    raising = tmp_path / "raising.py"
    raising.write_text("def get_config():\n    return undefined_name\n")
    argv = ["train", f"--config={raising}"]
    line = cli.flag_error_line(_parse_error(argv), argv)
    assert line == (
        f"config file failed at {raising}:2: NameError: name 'undefined_name' is not defined"
    )


def test_unknown_variant_line_names_the_closest_not_all(monkeypatch):
    monkeypatch.chdir(REPO)
    argv = ["train", "--config=configs/cifar10.py:imixer_s17"]  # 26 variants: not all listed
    line = cli.flag_error_line(_parse_error(argv), argv)
    assert "did you mean imixer_s16" in line and len(line) < 300, line


def test_dataset_suggestion_from_the_real_tfds_exception():
    import tensorflow_datasets as tfds

    with pytest.raises(ValueError) as info:
        tfds.builder("cifar11")
    assert len(str(info.value)) > 1000  # TFDS lists every name
    line = cli.one_line(info.value)
    assert line.startswith("config.data.name: TFDS has no dataset 'cifar11'; did you mean ")
    assert "'cifar10'" in line and len(line) < 200


def test_one_line_of_other_errors():
    assert cli.one_line(cli.UsageError("a\n  b; c")) == "a b; c"
    missing = FileNotFoundError(2, NOT_FOUND, "/x/config.json")
    assert cli.one_line(missing) == (
        f"{NOT_FOUND}: /x/config.json; check the path and its permissions"
    )
    bug = cli.one_line(ZeroDivisionError("division by zero"))
    assert bug.startswith("unexpected ZeroDivisionError: division by zero; rerun with --verbose")


def test_verbose_requested(monkeypatch):
    monkeypatch.delenv(cli.errors.VERBOSE_ENV, raising=False)
    assert not cli.errors.verbose_requested(["x", "--workdir", "w"])
    assert cli.errors.verbose_requested(["x", "--verbose"])
    monkeypatch.setenv(cli.errors.VERBOSE_ENV, "1")
    assert cli.errors.verbose_requested(["x"])


def test_path_checks_create_nothing(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(cli.UsageError, match="is a file, not a directory"):
        cli.output_dir(str(tmp_path / "file" / "sub"))
    assert cli.output_dir(str(tmp_path / "new" / "run")) == str(tmp_path / "new" / "run")
    with pytest.raises(cli.UsageError, match="does not exist"):
        cli.run_dir(str(tmp_path / "new"))
    with pytest.raises(cli.UsageError, match="has no checkpoints/"):
        cli.run_dir(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["file"]


# ---------------------------------------------------------------------------------------------
# Every entry point: one runner, --help, one-line errors (in process).


ENTRY_POINTS = {  # module: a flag --help must list
    "imixer_jax.train": "--config",
    "imixer_jax.evaluate": "--config",
    "imixer_jax.analyze": "--workdir",
    "imixer_jax.models": "--num_classes",
    "imixer_jax.weights": "--in",
    "benchmarks.step": "--img_size",
    "benchmarks.throughput": "--image_size",
    "benchmarks.gpu_suite": "--matmul_size",
    "experiments.sweep": "--sweep",
    "experiments.report": "--sweep",
}


@pytest.fixture
def entry_point(monkeypatch, capsys):
    """Runs ``cli.run(module.main, module.FLAGS, argv)``; returns (exit status, stdout, stderr
    lines). The process setup is undone afterwards (log filter; the TF log level is set so that
    it stays unchanged)."""
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.delenv(cli.errors.VERBOSE_ENV, raising=False)

    def run(name, *args):
        module = importlib.import_module(
            name if name != "imixer_jax.models" else f"{name}.__main__"
        )
        if name == "imixer_jax.weights":
            module = importlib.import_module(f"{name}.__main__")
        with pytest.raises(SystemExit) as info:
            cli.run(module.main, module.FLAGS, [name, *args])
        out, err = capsys.readouterr()
        return info.value.code, out, err.strip().splitlines()

    yield run
    logging.get_absl_handler().removeFilter(cli_app._FILTER)


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_help_lists_the_flags_and_exits_0(entry_point, name):
    code, out, err = entry_point(name, "--help")
    assert code == 0 and not err, err
    flag_list = out.split("\nflags:\n", 1)[1]  # after the docstring
    assert f"\n{ENTRY_POINTS[name]}:" in f"\n{flag_list}" and "--[no]verbose:" in flag_list


def test_help_of_a_fresh_process_prints_no_library_lines():
    # The throughput tool imports TensorFlow only when it measures: its --help is clean.
    process = _start("benchmarks.throughput", "--help")
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0 and stderr == "", stderr[-2000:]
    assert "--image_size" in stdout


def test_report_without_finished_runs_says_so_and_writes_nothing(entry_point, tmp_path):
    code, _, err = entry_point("experiments.report", "--sweep=cpu_study", f"--root={tmp_path}")
    assert code == 1 and err == [
        f"error: no finished run of sweep cpu_study in {tmp_path / 'cpu_study'} (0 of 15 "
        f"started); run python -m experiments.sweep --sweep cpu_study --run --root {tmp_path}"
    ]
    assert os.listdir(tmp_path) == []


def test_flag_and_argument_errors_are_one_line(entry_point):
    code, _, err = entry_point("experiments.sweep", "--sweep=no_such_sweep", "--dry_run")
    assert code == 1 and len(err) == 1
    assert err[0].startswith("error: --sweep no_such_sweep: no such sweep; one of adjoint, ")
    code, _, err = entry_point("experiments.sweep", "--dry_run", "--run")
    assert code == 1 and len(err) == 1 and err[0].endswith("; see --help"), err
    code, _, err = entry_point("imixer_jax.models", "--num_classes=10", "--img_size=17")
    assert code == 1 and err == [
        "error: img_size (17) must be divisible by patch_size (16); see --help"
    ]
    code, _, err = entry_point("benchmarks.step", "--model=imixer_s16")
    assert code == 1 and err == ["error: --batch is required; see --help"]
