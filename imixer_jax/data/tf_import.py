"""TensorFlow, imported on first use and, under an entry point, without its import banner.

Importing TensorFlow takes 5-10 s (it imports Keras, and Keras scikit-learn) and its C++ code
logs through absl before any log level applies: two or three lines on file descriptor 2 (absl's
initialisation warning, oneDNN and CPU-feature notes) that ``TF_CPP_MIN_LOG_LEVEL`` does not
stop. So nothing imports it at import time: the modules that need it (the TFDS pipeline, the
embedded dataset, the TensorBoard writer) call ``import_tensorflow()`` first, and a command that
stops on a bad input, or never reads a TFDS dataset, never pays for it. The entry points
(``imixer_jax.cli``) call ``quiet()`` unless ``--verbose``, and so does
``experiments/energy_descent.ipynb``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator
from types import ModuleType

_drop_banner = False


def quiet() -> None:
    """TensorFlow without its start-up lines: C++ INFO and WARNING lines off
    (``TF_CPP_MIN_LOG_LEVEL=2`` unless set) and the import banner dropped (``drop_banner``).
    The entry points call it, and a notebook may, before TensorFlow is first imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    drop_banner()


def drop_banner() -> None:
    """Later first imports of TensorFlow (``import_tensorflow``) send its banner to /dev/null."""
    global _drop_banner
    _drop_banner = True


@contextlib.contextmanager
def _stderr_descriptor_to_devnull() -> Iterator[None]:
    """Sends file descriptor 2 (what C++ code writes to) to /dev/null for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow() -> ModuleType:
    """``import tensorflow``; the first time after ``drop_banner()``, with its banner dropped."""
    if _drop_banner and "tensorflow" not in sys.modules:
        with _stderr_descriptor_to_devnull():
            importlib.import_module("tensorflow")
    return importlib.import_module("tensorflow")
