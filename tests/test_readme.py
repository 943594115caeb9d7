"""The README: its two set-up commands are the ones CI and the default config run, every Python
block runs on its own, and every command (README and docs pages) uses flags its entry point
defines."""

import importlib
import os
import pathlib
import re
import subprocess
import sys

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


# ---------------------------------------------------------------------------------------------
# Every code block of the README works on its own.


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)


def test_every_python_block_runs_alone(tmp_path):
    """Each ```python block in a fresh interpreter of its own (its own imports, nothing from the
    blocks before it), side by side, in an empty directory."""
    blocks = _blocks("python")
    assert len(blocks) >= 2
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    processes = []
    for i, block in enumerate(blocks):
        cwd = tmp_path / f"block{i}"
        cwd.mkdir()
        processes.append(
            subprocess.Popen(
                [sys.executable, "-c", block],
                cwd=cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for block, process in zip(blocks, processes):
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, f"{block[:200]}\n...\n{stderr[-2000:]}"


_COMMAND = re.compile(r"python -m ((?:imixer_jax|benchmarks|experiments)[\w.]*)([^`\n&#]*)")


def _commands() -> list[tuple[str, list[str]]]:
    """``(module, flag names)`` of every ``python -m`` command of this project in the README and
    the documentation pages, in code blocks and in inline code (a command may wrap onto the next
    line)."""
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        found += _page_commands(page.read_text())
    return found


def _page_commands(text: str) -> list[tuple[str, list[str]]]:
    blocks = re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)
    inline = [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", text.replace("```", ""))]
    found = []
    for source in [*blocks, *inline]:
        for module, args in _COMMAND.findall(source):
            names = [
                a.strip("[]").split("=")[0][2:]
                for a in args.split()
                if a.strip("[").startswith("--")
            ]
            found.append((module, names))
    return found


def test_every_command_uses_flags_its_entry_point_defines():
    commands = _commands()
    modules = {module for module, _ in commands}
    assert {"imixer_jax.train", "imixer_jax.evaluate", "benchmarks.step"} <= modules, modules
    for module, names in commands:
        package = module in ("imixer_jax.models", "imixer_jax.weights")  # python -m of a package
        entry = importlib.import_module(f"{module}.__main__" if package else module)
        for name in names:
            if name.startswith("config."):  # an override of a config key (--config.KEY=VALUE)
                assert "config" in entry.FLAGS, (module, name)
                continue
            assert name in entry.FLAGS, f"README: python -m {module} has no flag --{name}"
