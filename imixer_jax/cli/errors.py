"""One line for an exception that ends a command: ``<cause>; <fix>``."""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Iterator, Sequence

VERBOSE_ENV = "IMIXER_VERBOSE"
VERBOSE_HINT = f"rerun with --verbose (or {VERBOSE_ENV}=1) for the traceback"


class UsageError(Exception):
    """A bad input that an entry point detects itself; the message is one line
    ``<cause>; <fix>``."""


def verbose_requested(argv: Sequence[str]) -> bool:
    """Whether ``--verbose`` is on the command line or ``IMIXER_VERBOSE=1`` in the environment
    (read before the flags are parsed, so that a parse error can show its traceback too)."""
    if os.environ.get(VERBOSE_ENV, "").lower() in ("1", "true", "yes"):
        return True
    return any(arg in ("--verbose", "--verbose=true", "--verbose=1") for arg in argv)


def squash(text: str) -> str:
    """``text`` on one line (runs of whitespace, newlines included, become one space)."""
    return " ".join(text.split())


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and its causes (``raise ... from``) and contexts, outermost first."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _is_ours(error: BaseException) -> bool:
    """Exception classes of this package carry one-line messages by contract."""
    return isinstance(error, UsageError) or type(error).__module__.startswith("imixer_jax.")


def unknown_dataset_line(error: BaseException) -> str | None:
    """The line for TFDS's ``DatasetNotFoundError`` anywhere in ``error``'s chain (whose own
    message lists every registered name, 8 KB): the unknown name and the closest known ones."""
    registered = sys.modules.get("tensorflow_datasets.core.registered")
    if registered is None:  # TFDS was never imported: it raised nothing
        return None
    for cause in _chain(error):
        if isinstance(cause, registered.DatasetNotFoundError):
            match = re.search(r"[Dd]ataset (\S+) not found", str(cause))
            name = match.group(1) if match else "?"
            from tensorflow_datasets.core import load

            known = load.list_builders(with_community_datasets=False)
            close = difflib.get_close_matches(name.split("/")[0], known, n=3)
            fix = (
                "did you mean " + " or ".join(repr(n) for n in close) + "?"
                if close
                else "tensorflow_datasets.list_builders() lists the names"
            )
            return f"config.data.name: TFDS has no dataset {name!r}; {fix}"
    return None


def one_line(error: BaseException) -> str:
    """The ``<cause>; <fix>`` line (without ``error: ``) that reports ``error`` to a user.

    This package's exception classes and ``UsageError`` carry one-line messages by contract;
    file-system errors name the path; anything else is unexpected (a bug, or an input no check
    caught) and says how to see the traceback.
    """
    dataset = unknown_dataset_line(error)
    if dataset is not None:
        return dataset
    if _is_ours(error):
        return squash(str(error))
    if isinstance(error, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    if isinstance(error, OSError):
        if error.filename is None:  # raised with a message of its own
            return squash(str(error))
        return f"{error.strerror}: {error.filename}; check the path and its permissions"
    first = squash(str(error))[:300]
    return f"unexpected {type(error).__name__}: {first}; {VERBOSE_HINT}"
