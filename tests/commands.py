"""Running an entry point (a module with ``FLAGS`` and ``main``, see ``imixer_jax.cli``) in the
test process."""

from __future__ import annotations

from types import ModuleType

from imixer_jax import cli


def call(module: ModuleType, *args: str) -> None:
    """``python -m module args`` without the process setup: the flags parsed into
    ``module.FLAGS`` (every flag not in ``args`` at its default), then ``module.main()``."""
    cli.parse_flags(module.FLAGS, [module.__name__, *args])
    module.main()
