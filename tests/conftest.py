"""Shared fixtures: the bundled digits set and small models trained on it.

The trained models are read from ``tests/weights/digits.npz`` (written by
``tests/weights/make_weights.py``; see :mod:`small_models`): no test process trains.

Tiers: the default run (``python -m pytest``) deselects the tests marked ``slow``
(``addopts`` in ``pyproject.toml``); ``python -m pytest -m slow`` runs only those, and
``python -m pytest -m "slow or not slow"`` runs everything. A test marked
``crosscheck`` (it compares against a PyTorch reference) is slow as well.
"""

from __future__ import annotations

import jax
import pytest
from small_models import Trained, trained_digits

from jaxadv import examples

jax.config.update("jax_numpy_rank_promotion", "allow")

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
