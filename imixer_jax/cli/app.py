"""Running an entry point: process-wide setup, then ``main``; an exception that ends it becomes
one line ``error: <cause>; <fix>`` on stderr (exit status 1; 130 after Ctrl-C)."""

from __future__ import annotations

import argparse
import logging as py_logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from absl import app, logging

from imixer_jax.cli import errors
from imixer_jax.cli.flags import VERBOSE, parse_flags
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
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf_import.drop_banner()


def _fail(error: BaseException) -> NoReturn:
    print(f"error: {errors.one_line(error)}", file=sys.stderr, flush=True)
    sys.exit(130 if isinstance(error, KeyboardInterrupt) else 1)


def run_absl(main: Callable[[list[str]], Any]) -> None:
    """``absl.app.run(main)`` with the shared setup and flags parser (``parse_flags``); for the
    programs that read a config file."""
    setup_process(errors.verbose_requested(sys.argv))

    def reported(argv: list[str]) -> Any:
        try:
            return main(argv)
        except (Exception, KeyboardInterrupt) as e:
            if VERBOSE.value or errors.verbose_requested(argv):
                raise
            _fail(e)

    app.run(reported, flags_parser=parse_flags)


def run_argparse(
    main: Callable[[list[str] | None], Any],
    argv: Sequence[str] | None = None,
) -> None:
    """``main(argv)`` (an argparse program, see ``ArgumentParser``) with the shared setup
    (``setup_process``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = errors.verbose_requested(argv)
    setup_process(verbose)
    try:
        main(argv)
    except (Exception, KeyboardInterrupt) as e:
        if verbose:
            raise
        _fail(e)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line ``error: <cause>; see --help``
    (exit status 1) and that accepts ``--verbose`` (see ``run_argparse``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--verbose",
            action="store_true",
            help=f"on an error, show the traceback and all log lines ({errors.VERBOSE_ENV}=1)",
        )

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"error: {message}; see {self.prog} --help\n")
