"""The command-line layer shared by every entry point (``python -m imixer_jax.train``,
``evaluate``, ``analyze``, ``aot``, ``models``, ``weights``,
``python -m benchmarks.step|throughput|pod_scale|gpu_suite`` and
``python -m experiments.sweep|report``).

One contract for all of them: a bad input ends the command with one line
``error: <cause>; <fix>`` on stderr and exit status 1, before anything is compiled; ``--verbose``
(or ``IMIXER_VERBOSE=1``) shows the traceback and every library's log lines instead.

* ``run(main, FLAGS)``: every entry point. Its flags are absl flags (spelt with underscores,
  ``--num_classes``) defined in a ``FlagValues`` of its own (``FLAGS = cli.flag_values()``,
  ``flags.DEFINE_*(..., flag_values=FLAGS)``; ``define_config`` for ``--config FILE`` with
  ``--config.KEY=VALUE`` overrides); ``--help`` lists them and exits 0.
* ``UsageError``: what an entry point raises for a bad input it detects itself.
* ``run_dir`` / ``output_dir``: path checks for a workdir that is read or written.

Entry points import the library (TensorFlow, JAX) inside ``main``, after ``setup_process``
has set the process-wide options that must precede those imports.
"""

from imixer_jax.cli.app import run, setup_process
from imixer_jax.cli.errors import UsageError, one_line
from imixer_jax.cli.flags import define_config, flag_error_line, flag_values, parse_flags
from imixer_jax.cli.paths import output_dir, run_dir

__all__ = [
    "UsageError",
    "define_config",
    "flag_error_line",
    "flag_values",
    "one_line",
    "output_dir",
    "parse_flags",
    "run",
    "run_dir",
    "setup_process",
]
