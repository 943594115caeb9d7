"""Checkpoints of the train state in ``DIR/checkpoints`` (orbax ``CheckpointManager``).

Saves are asynchronous (the state is copied to host memory before ``save`` returns, so the next,
donating step cannot touch it), periodic (every ``every_steps`` steps, plus a forced save at the
end), and keep the newest ``keep``. A save that was interrupted (e.g. SIGKILL) leaves only a
temporary directory, which orbax ignores: ``latest_step`` is always a complete checkpoint.
Restores go straight into the shardings of an abstract target (``jax.ShapeDtypeStruct`` leaves
with ``.sharding``).

Integrity: every checkpoint holds, next to the state (item ``default``), the item ``integrity``:
a 64-bit content hash of every saved array (``fingerprints``), computed on device before the
save. A restore recomputes them and calls a checkpoint whose arrays differ (a flipped byte, a
truncated or missing file) damaged. The hash detects storage damage, not deliberate tampering:
any change of a single element changes it with certainty, several changes cancel with
probability about 2**-64.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from imixer_jax.training.checkpoint.log_filter import ORBAX_ERRORS, without_read_only_note
from imixer_jax.training.workdir import DAMAGED_DIR

# "default": the layout of single-item checkpoints; "carried": what the loop carries over a resume
_STATE, _INTEGRITY, _CARRIED = "default", "integrity", "carried"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be saved, or restored into this config's train state; one-line
    message."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint whose files are missing, unreadable or differ from what was saved."""


# What a failed write usually comes down to; TensorStore puts it after a long spec and path.
_OS_CAUSES = tuple(
    os.strerror(code)
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES)
)


def _save_cause(e: BaseException) -> str:
    """``'<OS cause>: <start of the error>'`` when the error names one of ``_OS_CAUSES``."""
    cause = next((c for c in _OS_CAUSES if c in str(e)), None)
    return _one_line(e, 120) if cause is None else f"{cause}: {_one_line(e, 40)}"


def _one_line(e: BaseException, limit: int = 300) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:limit]}"


# A hand-written checksum (neither orbax nor tensorstore stores one for OCDBT arrays), computed
# on device so that sharded and multi-host arrays need no gather.
_MULTIPLIERS = (np.uint32(0x9E3779B1), np.uint32(0x85EBCA77))


def _fingerprint(x: jax.Array) -> jax.Array:
    """uint32 ``[2]`` content hash of any array (its bits, shape-independent order): the sums of
    ``mix(bits[i]) * w_k(i)`` mod 2**32 with odd weights ``w_k(i)``; ``mix`` is a bijection, so a
    change of one element always changes both sums."""
    bits = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}"))
    bits = bits.astype(jnp.uint32).ravel()
    mixed = bits ^ (bits >> 16)
    index = jnp.arange(bits.size, dtype=jnp.uint32)
    return jnp.stack([jnp.sum(mixed * (index * m | 1), dtype=jnp.uint32) for m in _MULTIPLIERS])


@functools.cache
def _fingerprints_fn(out: NamedSharding | None):
    return jax.jit(lambda xs: [_fingerprint(x) for x in xs], out_shardings=out)


def fingerprints(state) -> dict[str, list[int]]:
    """``{key path: [h0, h1]}`` content hashes of every array of the pytree ``state``."""
    leaves = jax.tree_util.tree_leaves_with_path(state)
    shardings = [x.sharding for _, x in leaves if isinstance(x.sharding, NamedSharding)]
    out = NamedSharding(shardings[0].mesh, PartitionSpec()) if shardings else None
    hashes = _fingerprints_fn(out)([x for _, x in leaves])
    return {
        jax.tree_util.keystr(path): [int(h) for h in np.asarray(value)]
        for (path, _), value in zip(leaves, hashes)
    }


def _shapes(tree) -> dict[str, tuple]:
    """``{'params/stem/kernel': (shape, dtype)}`` of a state or of its saved metadata (which
    holds nnx Variables as dicts: the trailing '/value' is dropped from both)."""
    return {
        jax.tree_util.keystr(path, simple=True, separator="/").removesuffix("/value"): (
            tuple(x.shape),
            np.dtype(x.dtype),
        )
        for path, x in jax.tree_util.tree_leaves_with_path(tree)
    }


class Checkpointer:
    """Thin wrapper of ``ocp.CheckpointManager`` for one pytree (the train state).

    ``read_only=True`` (evaluation, inspection) creates, saves, moves and deletes nothing.
    """

    def __init__(
        self, workdir: str, *, every_steps: int = 0, keep: int = 1, read_only: bool = False
    ):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        if read_only and not os.path.isdir(self.directory):
            raise FileNotFoundError(
                f"no checkpoint directory {self.directory}: train into {workdir} first"
            )
        self.every_steps, self.read_only = every_steps, read_only
        ORBAX_ERRORS.reset()
        with without_read_only_note():  # read-only on purpose: orbax's warning would mislead
            self._manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=None if read_only else keep,
                    save_interval_steps=0 if read_only else 1,
                    enable_async_checkpointing=not read_only,
                    create=not read_only,
                    read_only=read_only,
                ),
                item_handlers={
                    _STATE: ocp.StandardCheckpointHandler(),
                    _INTEGRITY: ocp.JsonCheckpointHandler(),
                    _CARRIED: ocp.JsonCheckpointHandler(),
                },
            )

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def should_save(self, step: int) -> bool:
        """Whether ``step`` is a periodic save step (``every_steps`` > 0)."""
        return self.every_steps > 0 and step % self.every_steps == 0

    def reached_preemption(self, step: int) -> bool:
        """Whether every process has agreed to stop and save at ``step`` after a preemption
        notice (orbax / JAX's preemption sync point; False in a single process)."""
        return self._manager.reached_preemption(step)

    def save(self, step: int, state, carried: dict | None = None) -> None:
        """Start an asynchronous save of ``state`` as checkpoint ``step``, with the JSON-able
        ``carried`` (what the loop needs to resume exactly; restored with the state).

        The previous save is finished first (orbax's ``save`` would wait for it too), so that
        its errors are known before anything of them is logged.

        Raises:
          CheckpointError: the previous save failed (e.g. disk full); one line.
        """
        self.wait()
        args = ocp.args.Composite(
            **{
                _STATE: ocp.args.StandardSave(state),
                _INTEGRITY: ocp.args.JsonSave(fingerprints(state)),
                _CARRIED: ocp.args.JsonSave(carried or {}),
            }
        )
        try:
            self._manager.save(step, args=args, force=True)
        except Exception as e:  # orbax raises what the filesystem raises (OSError, ...)
            raise self._save_error(e) from e
        logging.info("checkpoint: saving step %d to %s", step, self.directory)

    def _save_error(self, e: Exception) -> CheckpointError:
        ORBAX_ERRORS.report()  # this one line replaces orbax's own error lines
        self._manager.reload()
        kept = self.latest_step()
        kept = "no checkpoint is kept" if kept is None else f"checkpoint {kept} is kept"
        return CheckpointError(
            f"saving a checkpoint to {self.directory} failed ({_save_cause(e)}); {kept}; "
            f"free disk space and rerun the same command to resume"
        )

    def check_for_errors(self) -> None:
        """Raise the error of a failed background save as a one-line CheckpointError."""
        try:
            self._manager.check_for_errors()
        except Exception as e:
            raise self._save_error(e) from e
        ORBAX_ERRORS.release()

    def _check_fits(self, step: int, abstract_state) -> None:
        """Compare the saved tree (paths, shapes, dtypes) with ``abstract_state``."""
        try:
            saved = _shapes(self._manager.item_metadata(step)[_STATE].tree)
        except Exception as e:  # unreadable metadata: the checkpoint is damaged
            raise DamagedCheckpointError(
                f"checkpoint {step} in {self.directory} is damaged ({_one_line(e)})"
            ) from e
        want = _shapes(abstract_state)
        if saved != want:
            diff = min(k for k in saved.keys() | want.keys() if saved.get(k) != want.get(k))
            raise CheckpointError(
                f"checkpoint {step} in {self.directory} does not fit this config's train state "
                f"(first difference at {diff}); use the config it was written with (see "
                f"config.json next to it) or a new workdir. Nothing was deleted."
            )

    def _restore_step(self, step: int, abstract_state) -> tuple[object, dict]:
        """``(state, carried)`` of checkpoint ``step``, verified."""
        try:
            return self._restore_verified(step, abstract_state)
        except CheckpointError:
            ORBAX_ERRORS.discard()  # orbax's echoes of the failure that this error reports
            raise

    def _restore_verified(self, step: int, abstract_state):
        self._check_fits(step, abstract_state)
        if not os.path.isdir(os.path.join(self.directory, str(step), _INTEGRITY)):
            raise DamagedCheckpointError(
                f"checkpoint {step} in {self.directory} is damaged (no integrity record)"
            )
        items = {
            _STATE: ocp.args.StandardRestore(abstract_state),
            _INTEGRITY: ocp.args.JsonRestore(),
        }
        if os.path.isdir(os.path.join(self.directory, str(step), _CARRIED)):
            items[_CARRIED] = ocp.args.JsonRestore()
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # orbax raises many types (ValueError, KeyError, tensorstore...)
            raise DamagedCheckpointError(
                f"checkpoint {step} in {self.directory} is damaged ({_one_line(e)})"
            ) from e
        state, carried = restored[_STATE], restored.get(_CARRIED) or {}
        saved, now = restored[_INTEGRITY], fingerprints(state)
        bad = [path for path in now if saved.get(path) != now[path]]
        if bad or set(saved) != set(now):
            raise DamagedCheckpointError(
                f"checkpoint {step} in {self.directory} is damaged (content hash of "
                f"{bad[0] if bad else 'its array list'} differs from the one saved with it)"
            )
        return state, carried

    def restore(self, abstract_state, step: int | None = None):
        """Checkpoint ``step`` (default: the latest) with the structure, dtypes and shardings of
        ``abstract_state``, its content verified.

        Raises:
          FileNotFoundError: no such checkpoint.
          DamagedCheckpointError: it is damaged; CheckpointError: it does not fit.
        """
        step = self.latest_step() if step is None else step
        if step not in self.all_steps():
            raise FileNotFoundError(
                f"no checkpoint{'' if step is None else f' of step {step}'} in "
                f"{self.directory}; available steps: {self.all_steps() or 'none'}"
            )
        return self._restore_step(step, abstract_state)[0]

    def restore_newest_intact(self, abstract_state, *, set_aside: bool, restart: bool = False):
        """``(step, state, carried)`` of the newest checkpoint that is intact (``carried``: what
        ``save`` carried with it), or ``(None, None, {})`` when there is none at all. Each damaged
        newer one gets one warning line; with ``set_aside`` (the trainer, which will save these
        steps again) it is moved to ``DIR/damaged_checkpoints/<step>``, never deleted.

        When every checkpoint is damaged, nothing is moved: the run is not restarted from step 0
        unless ``restart`` (then they are all set aside and ``(None, None, {})`` is returned).

        Raises:
          CheckpointError: the newest checkpoint does not fit, or every checkpoint is damaged.
        """
        steps = sorted(self.all_steps(), reverse=True)
        damaged: list[tuple[int, DamagedCheckpointError]] = []
        found = None, None, {}
        for step in steps:
            try:
                found = step, *self._restore_step(step, abstract_state)
                break
            except DamagedCheckpointError as e:
                damaged.append((step, e))
        if damaged and found[0] is None and not restart:
            raise CheckpointError(
                f"every checkpoint in {self.directory} (steps {sorted(s for s, _ in damaged)}) "
                "is damaged, nothing was moved; train with --restart_damaged to set them aside "
                "and start from step 0, or use a new workdir"
            )
        for step, e in damaged:
            where = ""
            if set_aside and jax.process_index() == 0:
                where = f"; moved to {self._set_aside(step)}"
            if set_aside and jax.process_count() > 1:  # every process sees it moved
                multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
                self._manager.reload()
            logging.warning(
                "%s%s; %s",
                e,
                where,
                "resuming from an older checkpoint"
                if found[0] is not None
                else "training from step 0 (--restart_damaged)",
            )
        return found

    def _set_aside(self, step: int) -> str:
        target = os.path.join(os.path.dirname(self.directory), DAMAGED_DIR, str(step))
        if os.path.lexists(target):
            target += f".{len(os.listdir(os.path.dirname(target)))}"
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.move(os.path.join(self.directory, str(step)), target)
        self._manager.reload()
        return target

    def wait(self) -> None:
        """Block until pending saves are on disk.

        Raises:
          CheckpointError: a save failed (e.g. disk full); one line.
        """
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            raise self._save_error(e) from e
        self.check_for_errors()

    def close(self) -> None:
        """Finish pending saves and release orbax's threads.

        Raises:
          CheckpointError: a pending save failed (e.g. disk full); one line.
        """
        try:
            self._manager.close()
        except Exception as e:  # a pending save's failure, raised by orbax's close
            raise self._save_error(e) from e
