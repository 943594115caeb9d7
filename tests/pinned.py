"""What the pinned-output tests share (``test_pinned.py``, ``test_paramixer_pinned.py``): the
golden files' directory, flat arrays of a state, and the comparison with a golden case."""

from __future__ import annotations

import os

import jaxlib
import numpy as np
from flax import nnx

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def flat_state(state: nnx.State) -> dict[str, np.ndarray]:
    """``{'blocks/0/token_mixer/fc1/kernel': array, ...}`` of ``state``."""
    return {"/".join(str(p) for p in path): np.asarray(v) for path, v in nnx.to_flat_state(state)}


def same_jaxlib(recorded: str) -> bool:
    """Whether the goldens were written by this jaxlib (then the comparison is bit for bit)."""
    return recorded == jaxlib.__version__


def load_golden(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return dict(f)


def assert_case_pinned(name: str, got: dict[str, np.ndarray], golden_file: dict) -> None:
    """``got`` (a test file's ``compute_case(name)``) equals case ``name`` of a loaded golden
    ``.npz`` (keys ``<case>::<what>:<path>`` and ``jaxlib``)."""
    golden = {k.split("::", 1)[1]: v for k, v in golden_file.items() if k.startswith(name + "::")}
    exact = same_jaxlib(str(golden_file["jaxlib"]))
    assert sorted(got) == sorted(golden), "pinned arrays (parameter paths) changed"
    for key, want in golden.items():
        if exact:
            np.testing.assert_array_equal(got[key], want, err_msg=key)
        else:
            # Another XLA: float32 round-off through at most ~40 dependent ops (bf16: 8-bit
            # mantissa); parameters are drawn by the RNG and must stay exact.
            rtol = 0 if key.startswith("param:") else 1e-2 if "bf16" in name else 1e-4
            np.testing.assert_allclose(got[key], want, rtol=rtol, atol=rtol * 1e-2, err_msg=key)
