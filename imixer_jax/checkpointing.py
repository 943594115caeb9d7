"""Checkpoints of the train state in ``DIR/checkpoints`` (orbax ``CheckpointManager``).

Saves are asynchronous (the state is copied to host memory before ``save`` returns, so the next,
donating step cannot touch it), periodic (every ``every_steps`` steps, plus a forced save at the
end), and keep the newest ``keep``. A save that was interrupted (e.g. SIGKILL) leaves only a
temporary directory, which orbax ignores: ``latest_step`` is always a complete checkpoint.
Restores go straight into the shardings of an abstract target (``jax.ShapeDtypeStruct`` leaves
with ``.sharding``).
"""

from __future__ import annotations

import logging as py_logging
import os

import orbax.checkpoint as ocp
from absl import logging


class _DropOrbaxInfo(py_logging.Filter):
    def filter(self, record: py_logging.LogRecord) -> bool:
        return record.levelno >= py_logging.WARNING or "/orbax/" not in record.pathname


_ORBAX_FILTER = _DropOrbaxInfo()


def quiet_orbax_logging() -> None:
    """Drop orbax's INFO lines (a dozen per save) from the absl log; its warnings stay."""
    py_logging.getLogger("absl").addFilter(_ORBAX_FILTER)  # adding it twice is a no-op


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored into this config's train state; one-line message."""


class Checkpointer:
    """Thin wrapper of ``ocp.CheckpointManager`` for one pytree (the train state)."""

    def __init__(self, workdir: str, *, every_steps: int, keep: int):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.every_steps = every_steps
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=True, create=True
            ),
        )

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def should_save(self, step: int) -> bool:
        """Whether ``step`` is a periodic save step (``every_steps`` > 0)."""
        return self.every_steps > 0 and step % self.every_steps == 0

    def save(self, step: int, state) -> None:
        """Start an asynchronous save of ``state`` as checkpoint ``step``."""
        self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
        logging.info("checkpoint: saving step %d to %s", step, self.directory)

    def restore(self, abstract_state, step: int | None = None):
        """Checkpoint ``step`` (default: the latest) with the structure, dtypes and shardings of
        ``abstract_state``."""
        step = self.latest_step() if step is None else step
        if step not in self.all_steps():
            raise FileNotFoundError(
                f"no checkpoint{'' if step is None else f' of step {step}'} in "
                f"{self.directory}; available steps: {self.all_steps() or 'none'}"
            )
        try:
            return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        except Exception as e:  # orbax raises many types (ValueError, KeyError, tensorstore...)
            first = " ".join(str(e).split())[:300]
            raise CheckpointError(
                f"checkpoint {step} in {self.directory} does not fit this config's train state or "
                f"is damaged ({type(e).__name__}: {first}); use the config it was written with "
                f"(see config.json next to it) or a new workdir. Nothing was deleted."
            ) from e

    def wait(self) -> None:
        """Block until pending saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
