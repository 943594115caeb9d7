"""One trainer per workdir: an exclusive ``fcntl.flock`` on ``DIR/lock``, held for the run.

The kernel releases the lock when its process ends in any way (SIGKILL, OOM, power loss on a
local disk), so a stale lock file never blocks a restart; the file only records who holds it
(pid, host, start time) for the refusal message. On a network filesystem without ``flock``
support the lock cannot be taken and the run says so.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time

from imixer_jax.training.errors import TrainingError
from imixer_jax.training.workdir import LOCK_FILE, check_no_links


class WorkdirBusyError(TrainingError):
    """Another trainer holds the workdir; the message is one line."""


class WorkdirLock:
    """Context manager: ``with WorkdirLock(workdir): ...`` (creates ``workdir`` if needed).

    Raises:
      WorkdirBusyError: another process holds the lock.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self._fd: int | None = None

    def __enter__(self) -> WorkdirLock:
        workdir = os.path.dirname(self.path)
        try:
            os.makedirs(workdir, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            if os.path.islink(self.path):  # O_NOFOLLOW: the file is truncated below
                check_no_links(workdir)
            raise TrainingError(
                f"cannot use {workdir} as the workdir ({e.strerror}): give a writable directory "
                f"(it is created if missing)"
            ) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise WorkdirBusyError(
                f"{workdir} is in use by another trainer ({holder}); wait "
                f"for it to end or train into another workdir"
            ) from None
        except OSError as e:
            os.close(fd)
            raise TrainingError(
                f"cannot lock {self.path} ({e.strerror}); use a workdir on a filesystem with "
                f"file locks"
            ) from e
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        try:  # who holds it, for the refusal message only: a full disk must not stop the run
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp} UTC".encode())
        except OSError:
            pass
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock; the file stays (harmless, see above)
            self._fd = None
