"""Deprecated alias of ``imixer_jax.analysis`` (same names); import ``imixer_jax.analysis``."""

import warnings

from imixer_jax.analysis import *  # noqa: F403
from imixer_jax.analysis import __all__  # noqa: F401

warnings.warn(
    "imixer_jax.inspection is deprecated: import imixer_jax.analysis",
    DeprecationWarning,
    stacklevel=2,
)
