"""Shared fixtures: the bundled digits set and small models trained on it.

The trained models are read from ``tests/weights/digits.npz`` (written by
``tests/weights/make_weights.py``; see :mod:`small_models`): no test process trains.

Tiers: the default run (``python -m pytest``) deselects the tests marked ``slow``
(``addopts`` in ``pyproject.toml``); ``python -m pytest -m slow`` runs only those, and
``python -m pytest -m "slow or not slow"`` runs everything. A test marked
``crosscheck`` (it compares against a PyTorch reference) is slow as well.
"""

from __future__ import annotations

import os

import jax
import pytest
from small_models import Trained, trained_digits

from jaxadv import examples

jax.config.update("jax_numpy_rank_promotion", "allow")

# JAXADV_TEST_COMPILATION_CACHE=<dir>: keep this run's compilations in JAX's persistent cache
# there, and reuse earlier runs' (a second run of test_registry.py and test_attack_faults.py:
# 62 s instead of 245 s). Off by default: within one run it found few repeats and cost 20 %.
if os.environ.get("JAXADV_TEST_COMPILATION_CACHE"):
    jax.config.update("jax_compilation_cache_dir", os.environ["JAXADV_TEST_COMPILATION_CACHE"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

__all__ = ["Trained"]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every cross-check against a PyTorch reference belongs to the slow tier."""
    for item in items:
        if item.get_closest_marker("crosscheck") is not None and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def digits() -> tuple[examples.Split, examples.Split]:
    return examples.load_digits(0)


@pytest.fixture(scope="session")
def cnn() -> Trained:
    """The digits CNN, seed 0 (about 99% test accuracy)."""
    return trained_digits("cnn")


@pytest.fixture(scope="session")
def cnn_b() -> Trained:
    """A second digits CNN trained independently (seed 1): a transfer target."""
    return trained_digits("cnn_b")


@pytest.fixture(scope="session")
def mlp() -> Trained:
    """A digits MLP (seed 0)."""
    return trained_digits("mlp")
