"""Checks of the directories an entry point reads or writes, before any work: a read-only
command must not create anything, a writing one must fail at once, not after compiling."""

from __future__ import annotations

import os
import tempfile

from imixer_jax.cli.errors import UsageError


def run_dir(path: str, flag: str = "--workdir") -> str:
    """``path`` if it is an existing directory that holds a run's ``checkpoints/``; read-only
    commands (evaluate, analyze) use it and create nothing.

    Raises:
      UsageError: it does not exist, is not a directory or holds no checkpoints.
    """
    if not os.path.exists(path):
        raise UsageError(f"{flag} {path} does not exist; pass the workdir of a training run")
    if not os.path.isdir(path):
        raise UsageError(f"{flag} {path} is not a directory; pass the workdir of a training run")
    if not os.path.isdir(os.path.join(path, "checkpoints")):
        raise UsageError(
            f"{flag} {path} has no checkpoints/; train into it first "
            "(python -m imixer_jax.train --workdir ...) or pass the workdir of a training run"
        )
    return path


def output_dir(path: str, flag: str = "--workdir") -> str:
    """``path`` if it is a directory this process can write, or can be created as one (it is
    not created here).

    Raises:
      UsageError: it, or its nearest existing ancestor, is a file or cannot be written.
    """
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = path if existing == os.path.abspath(path) else f"{path} (at {existing})"
        raise UsageError(f"{flag} {where} is a file, not a directory; pass a directory")
    try:  # os.access can be wrong (ACLs, network and special file systems): try a file
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        where = path if existing == os.path.abspath(path) else f"{path} (in {existing})"
        raise UsageError(
            f"{flag} {where} is not writable ({e.strerror}); pass a directory you can write"
        ) from e
    return path
