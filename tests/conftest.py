"""Suite-wide setup: one JAX compilation cache for the whole test run. What tests share besides
is imported from modules beside this one: ``tiny`` (the tiny model and trainer configs),
``pinned`` (the pinned-output comparison), ``commands`` (running an entry point in process),
``random_draws``, ``multidevice`` and ``tensorboard_events``.

Many tests compile the same tiny models and training steps, in the pytest-xdist workers and in the
trainer processes the tests start. JAX's persistent compilation cache, in pytest's cache directory
(``.pytest_cache/d/jax-compilation-cache``, so also kept between local runs), lets each program
compile once. The environment variable is what the workers and the child processes inherit, and
JAX reads it at import: this hook runs before any test module imports JAX. A cache directory set
by the caller is kept; ``-p no:cacheprovider`` runs without one, ``--cache-clear`` empties it.
No size limit: JAX's eviction keeps access-time files that processes sharing the directory race
on (each lost race is a warning on stderr, which the one-line-error tests would see).
"""

import os

import pytest


def pytest_configure(config):
    cache = getattr(config, "cache", None)  # absent under -p no:cacheprovider
    if cache is None or "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(cache.mkdir("jax-compilation-cache"))


@pytest.fixture(scope="session")
def jax_cache(tmp_path_factory) -> str:
    """The compilation cache for the trainer processes a test starts: the suite's, or (under
    ``-p no:cacheprovider``) one for this run, so that processes running the same programs
    compile them once."""
    return os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(tmp_path_factory.mktemp("jax_cache"))
