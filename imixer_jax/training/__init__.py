"""Training and evaluation library: ``train_and_evaluate(config, workdir)`` and
``evaluate_checkpoint(config, workdir, step)``, importable from a notebook.

Data flow: config -> ``prepare`` (``state.py``: validation, ``jax.distributed``, mesh, dataset
facts, optimiser, abstract model; everything that can fail does so here, before anything compiles)
-> train state created directly into its ``NamedSharding``s or restored from the newest checkpoint
-> jitted, donated train step over ``(state, global batch split over the mesh)`` (``steps.py``) ->
metrics (``writers.py``) / checkpoints (``imixer_jax.training.checkpoint.manager``) / evaluation
(``evaluation.py``), driven by the loop (``loop.py``).

The train step and its state are built from typed pieces (``StepSettings``, ``train_state``), so
importing this package does not import ``ml_collections``: the config-driven names (``prepare``,
``train_and_evaluate``, ...) import their modules on first access.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from imixer_jax.training.errors import TrainingError
from imixer_jax.training.steps import StepSettings, make_eval_step, make_train_step
from imixer_jax.training.train_state import TrainState, graphdefs, new_state

# name -> module of the config-driven API (these import ml_collections).
_LAZY = {
    "ConfigChangedError": "workdir",
    "Setup": "state",
    "evaluate": "evaluation",
    "evaluate_checkpoint": "evaluation",
    "init_state": "state",
    "prepare": "state",
    "restore_state": "evaluation",
    "train_and_evaluate": "loop",
}

__all__ = [
    "StepSettings",
    "TrainState",
    "TrainingError",
    "graphdefs",
    "make_eval_step",
    "make_train_step",
    "new_state",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    """The config-driven names and the submodules on first access (PEP 562)."""
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
