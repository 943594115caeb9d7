"""Running an entry point: process-wide setup, then ``main``; an exception that ends it becomes
one line ``error: <cause>; <fix>`` on stderr (exit status 1; 130 after Ctrl-C)."""

from __future__ import annotations

import logging as py_logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from absl import app, flags, logging

from imixer_jax.cli import errors
from imixer_jax.cli.flags import HELP_FLAGS, help_text, parse_flags
from imixer_jax.data import tf_import

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


class _OwnInfoOnly(py_logging.Filter):
    """Keeps this package's log lines and every library's warnings and errors; drops the
    libraries' INFO chatter (orbax: a dozen lines per save; TFDS, JAX backends)."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        return record.levelno >= py_logging.WARNING or record.pathname.startswith(_PACKAGE_DIR)


_FILTER = _OwnInfoOnly()


def setup_process(verbose: bool) -> None:
    """Process-wide options of every entry point; call it before TensorFlow is imported.

    Unless ``verbose``: only this package's INFO lines reach the absl log (libraries keep their
    warnings and errors), TensorFlow's C++ INFO and WARNING lines are off
    (``TF_CPP_MIN_LOG_LEVEL=2`` unless set) and TensorFlow's import banner is dropped when it is
    first imported (``imixer_jax.data.tf_import``).
    """
    if verbose:
        return
    logging.get_absl_handler().addFilter(_FILTER)  # adding it twice is a no-op
    from imixer_jax.training.checkpoint import (
        log_filter,  # orbax's and TensorStore's echoes of our errors
    )

    log_filter.quiet_orbax_logging()
    tf_import.quiet()


def _fail(error: BaseException) -> NoReturn:
    print(f"error: {errors.one_line(error)}", file=sys.stderr, flush=True)
    sys.exit(130 if isinstance(error, KeyboardInterrupt) else 1)


def run(
    main: Callable[[], Any], values: flags.FlagValues, argv: Sequence[str] | None = None
) -> NoReturn:
    """Run an entry point: ``absl.app.run`` with the shared process setup (``setup_process``),
    ``argv`` (default ``sys.argv``) parsed into the entry point's flags ``values``
    (``flag_values``; one line for a bad flag), then ``main()``, whose exception becomes one
    line ``error: <cause>; <fix>``. ``--help`` prints the caller's docstring and its flags and
    exits 0. Ends the process (``SystemExit``: 0, 1 on an error, 130 after Ctrl-C)."""
    argv = list(sys.argv if argv is None else argv)
    verbose = errors.verbose_requested(argv)
    setup_process(verbose)
    if any(arg in HELP_FLAGS for arg in argv[1:]):
        print(help_text(values, sys.modules[main.__module__].__doc__), end="")
        sys.exit(0)

    def reported(_: list[str]) -> None:
        try:
            main()
        except (Exception, KeyboardInterrupt) as e:
            if verbose or values["verbose"].value:
                raise
            _fail(e)

    app.run(reported, argv=argv, flags_parser=lambda args: parse_flags(values, args))
