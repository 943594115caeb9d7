"""The trainer's workdir besides its checkpoints: nothing in it is reached through a symbolic link,
and ``config.json`` keeps the history of the config that the checkpoints were trained with.

Links: every file and directory the trainer writes, moves or deletes (``WRITTEN``, and the entries
of its directories) must be inside the workdir. A symbolic link among them (planted, or left by a
copy) would send a write elsewhere, so the run refuses to start with one line naming it; the files
the trainer creates itself are opened with ``O_NOFOLLOW`` too (``open_for_writing``), so a link
made after the check fails the write instead of following it.

Config history: ``config.json`` is the config in force (what ``analysis.load_run`` reads);
``config_history.jsonl`` has one row per change, ``{"step": s, "config": {...}, "changed":
{key: [old, new]}, "reason": ...}``, the config from step s + 1 on. A resume whose config differs
from ``config.json`` in a key that changes the training trajectory is refused
(``ConfigChangedError``) unless the keys are allowed explicitly (``--allow_config_change``), and
the change is recorded. Keys that change only how results are reported, the checkpoint cadence or
the hardware are ``UNTRACKED``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from imixer_jax.training.errors import TrainingError

if TYPE_CHECKING:  # type hints only: imported without ml_collections
    import ml_collections

CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"
LOCK_FILE = "lock"
METRICS_FILE = "metrics.jsonl"
DAMAGED_DIR = "damaged_checkpoints"
# Everything the trainer writes, moves or deletes in a workdir (``*.tmp``: atomic replacements).
WRITTEN = (
    LOCK_FILE,
    METRICS_FILE,
    f"{METRICS_FILE}.tmp",
    CONFIG_FILE,
    f"{CONFIG_FILE}.tmp",
    HISTORY_FILE,
    "parameters.txt",
    "parameters.txt.tmp",
    "tensorboard",
    "checkpoints",
    DAMAGED_DIR,
    "profile",
)
# Keys that do not change the parameters a run reaches: reporting, checkpoint cadence, hardware.
UNTRACKED = (
    "log_every_steps",
    "eval_every_steps",
    "eval_batch_size",
    "profile_steps",
    "checkpoint",
    "distributed",
    "mesh",
    "data.data_dir",
)


class ConfigChangedError(TrainingError):
    """A resume whose config changes keys that the checkpoints were trained without."""


def _link_error(path: str) -> TrainingError:
    return TrainingError(
        f"{path} is a symbolic link (to {os.readlink(path)}); the trainer writes only inside its "
        "workdir: remove the link (or use another workdir)"
    )


def check_no_links(workdir: str) -> None:
    """Raise a one-line TrainingError for the first of ``WRITTEN``, or entry of one of its
    directories, that is a symbolic link (the workdir itself may be one)."""
    for name in WRITTEN:
        path = os.path.join(workdir, name)
        if os.path.islink(path):
            raise _link_error(path)
        if os.path.isdir(path):
            with os.scandir(path) as entries:
                for entry in entries:
                    if entry.is_symlink():
                        raise _link_error(entry.path)


def open_for_writing(path: str, flags: int = os.O_TRUNC) -> int:
    """A write-only file descriptor of ``path`` (created if missing; ``flags``: ``O_TRUNC`` or
    ``O_APPEND``) that fails with ``ELOOP`` rather than follow a symbolic link."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | flags, 0o644)
    except OSError as e:
        if os.path.islink(path):
            raise _link_error(path) from e
        raise


def _write_atomically(path: str, text: str) -> None:
    fd = open_for_writing(path + ".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def _append(path: str, line: str) -> None:
    fd = open_for_writing(path, os.O_APPEND)
    with os.fdopen(fd, "w") as f:
        f.write(line)


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _tracked(key: str) -> bool:
    return not any(key == u or key.startswith(u + ".") for u in UNTRACKED)


def _as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json_best_effort(sort_keys=True))


def _stored(workdir: str) -> dict[str, Any] | None:
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise TrainingError(
            f"cannot read {path} ({type(e).__name__}), the config the checkpoints were trained "
            "with; restore the file or use a new workdir"
        ) from e


def config_changes(config: ml_collections.ConfigDict, workdir: str) -> dict[str, tuple[Any, Any]]:
    """``{key: (recorded, now)}`` for every tracked key whose value differs from
    ``workdir/config.json`` (keys that only one of them has are not compared: a field added to
    or removed from the schema since)."""
    stored = _stored(workdir)
    if stored is None:
        return {}
    before, now = _flat(stored), _flat(_as_json(config))
    return {
        key: (before[key], now[key])
        for key in sorted(before.keys() & now.keys())
        if _tracked(key) and before[key] != now[key]
    }


def _allowed(key: str, allow: Sequence[str]) -> bool:
    return any(key == a or key.startswith(a + ".") for a in allow)


def check_resume(
    config: ml_collections.ConfigDict, workdir: str, allow: Sequence[str] = ()
) -> dict[str, tuple[Any, Any]]:
    """The changes of ``config`` against ``workdir/config.json`` (see ``config_changes``) when
    every one is in ``allow`` (a key, or a section such as ``schedule``).

    Raises:
      ConfigChangedError: one line naming the keys that changed without being allowed.
    """
    changes = config_changes(config, workdir)
    refused = [key for key in changes if not _allowed(key, allow)]
    if refused:
        shown = ",".join(refused[:4]) + (f" (and {len(refused) - 4} more)" if refused[4:] else "")
        key, (old, new) = refused[0], changes[refused[0]]
        raise ConfigChangedError(
            f"the checkpoints were trained with other values of {shown} (e.g. {key} "
            f"{old!r:.20} -> {new!r:.20}); rerun with the config of config.json, or pass "
            f"--allow_config_change={','.join(refused[:4])}{',...' if refused[4:] else ''} to "
            "continue with it (recorded)"
        )
    return changes


def record_config(
    config: ml_collections.ConfigDict,
    workdir: str,
    step: int,
    changes: Mapping[str, tuple[Any, Any]],
    reason: str,
) -> None:
    """Make ``config`` the one in force from step ``step + 1`` on: a history row, then
    ``config.json`` (atomically); nothing for a ``reason`` 'resume' (without changes).

    Raises:
      TrainingError: a file cannot be written (one line).
    """
    stored = _stored(workdir)
    now = _as_json(config)
    if reason == "resume" and stored == now and os.path.exists(os.path.join(workdir, HISTORY_FILE)):
        return
    row = {"step": step, "reason": reason, "changed": {k: list(v) for k, v in changes.items()}}
    try:
        _append(os.path.join(workdir, HISTORY_FILE), json.dumps({**row, "config": now}) + "\n")
        _write_atomically(
            os.path.join(workdir, CONFIG_FILE),
            config.to_json_best_effort(indent=2, sort_keys=True) + "\n",
        )
    except OSError as e:
        raise TrainingError(
            f"writing the config to {workdir} failed ({e.strerror}); free disk space or fix the "
            "workdir's permissions and rerun"
        ) from e
