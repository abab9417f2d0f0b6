"""Shared fixtures: the bundled digits set and small models trained on it.

Models are trained once per test session (a few seconds each on a CPU).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import pytest

import jaxadv
from jaxadv import examples

jax.config.update("jax_numpy_rank_promotion", "allow")


class Trained(NamedTuple):
    model: Any
    variables: Any
    logits_fn: Any


@pytest.fixture(scope="session")
def digits() -> tuple[examples.Split, examples.Split]:
    return examples.load_digits(0)


def _train(model: Any, train: examples.Split, seed: int) -> Trained:
    variables = examples.train_classifier(model, train, seed=seed)
    return Trained(model, variables, jaxadv.from_flax(model, variables))


@pytest.fixture(scope="session")
def cnn(digits: Any) -> Trained:
    """The digits CNN, seed 0 (about 99% test accuracy)."""
    return _train(examples.DigitsCNN(), digits[0], seed=0)


@pytest.fixture(scope="session")
def cnn_b(digits: Any) -> Trained:
    """A second digits CNN trained independently (seed 1): a transfer target."""
    return _train(examples.DigitsCNN(), digits[0], seed=1)


@pytest.fixture(scope="session")
def mlp(digits: Any) -> Trained:
    """A digits MLP (seed 0)."""
    return _train(examples.DigitsMLP(), digits[0], seed=0)


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs() -> Any:
    """Drop JAX's compiled programs after each test file.

    Hundreds of files' worth of executables would otherwise stay alive for the
    whole session; the trained fixtures (arrays) are kept, only programs go.
    """
    yield
    jax.clear_caches()
