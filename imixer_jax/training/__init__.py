"""Training and evaluation library: ``train_and_evaluate(config, workdir)`` and
``evaluate_checkpoint(config, workdir, step)``, importable from a notebook.

Data flow: config -> ``prepare`` (``state.py``: validation, ``jax.distributed``, mesh, dataset
facts, optimiser, abstract model; everything that can fail does so here, before anything compiles)
-> train state created directly into its ``NamedSharding``s or restored from the newest checkpoint
-> jitted, donated train step over ``(state, global batch sharded on 'data')`` (``steps.py``) ->
metrics (``writers.py``) / checkpoints (``imixer_jax.training.checkpoint.manager``) / evaluation
(``evaluation.py``), driven by the loop (``loop.py``).
"""

from imixer_jax.training.errors import TrainingError
from imixer_jax.training.evaluation import evaluate, evaluate_checkpoint, restore_state
from imixer_jax.training.loop import train_and_evaluate
from imixer_jax.training.state import Setup, TrainState, init_state, prepare
from imixer_jax.training.steps import make_eval_step, make_train_step
from imixer_jax.training.workdir import ConfigChangedError

__all__ = [
    "ConfigChangedError",
    "Setup",
    "TrainState",
    "TrainingError",
    "evaluate",
    "evaluate_checkpoint",
    "init_state",
    "make_eval_step",
    "make_train_step",
    "prepare",
    "restore_state",
    "train_and_evaluate",
]
