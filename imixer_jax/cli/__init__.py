"""The command-line layer shared by every entry point (``python -m imixer_jax.train``,
``evaluate``, ``analyze``, ``aot``, ``models``, ``python -m benchmarks.step|pod_scale`` and
``python -m experiments.sweep|report``).

One contract for all of them: a bad input ends the command with one line
``error: <cause>; <fix>`` on stderr and exit status 1, before anything is compiled; ``--verbose``
(or ``IMIXER_VERBOSE=1``) shows the traceback and every library's log lines instead.

* ``run_absl(main)``: programs with absl flags and ``config_flags`` (``define_config``).
* ``run_argparse(main)`` with ``ArgumentParser``: programs with positional arguments.
* ``UsageError``: what an entry point raises for a bad input it detects itself.
* ``run_dir`` / ``output_dir``: path checks for a workdir that is read or written.

Entry points import the library (TensorFlow, JAX) inside ``main``, after ``setup_process``
has set the process-wide options that must precede those imports.
"""

from imixer_jax.cli.app import ArgumentParser, run_absl, run_argparse, setup_process
from imixer_jax.cli.errors import UsageError, one_line
from imixer_jax.cli.flags import define_config, flag_error_line, parse_flags
from imixer_jax.cli.paths import output_dir, run_dir

__all__ = [
    "ArgumentParser",
    "UsageError",
    "define_config",
    "flag_error_line",
    "one_line",
    "output_dir",
    "parse_flags",
    "run_absl",
    "run_argparse",
    "run_dir",
    "setup_process",
]
