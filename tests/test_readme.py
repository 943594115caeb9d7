"""The README's two set-up commands are the ones CI and the default config run."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _setup_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", setup, flags=re.S)


def test_setup_has_exactly_two_commands():
    commands = _setup_commands()
    assert len(commands) == 2, commands
    assert all("\n" not in c for c in commands), commands


def test_ci_runs_the_readme_test_command():
    install_and_test = _setup_commands()[1]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install_and_test in ci, f".ci/run must run the README's command: {install_and_test}"


def test_main_job_is_the_default_config_command():
    main_job = _setup_commands()[0]
    assert "python -m imixer_jax.train --config configs/default.py" in main_job
    doc = (ROOT / "configs" / "default.py").read_text()
    assert "python -m imixer_jax.train --config configs/default.py --workdir runs/default" in doc
