"""Shared fixtures: the bundled digits set and small models trained on it.

The trained models are read from ``tests/weights/digits.npz`` (written by
``tests/weights/make_weights.py``; see :mod:`small_models`): no test process trains.

Tiers: the default run (``python -m pytest``) deselects the tests marked ``slow``
(``addopts`` in ``pyproject.toml``); ``python -m pytest -m slow`` runs only those, and
``python -m pytest -m "slow or not slow"`` runs everything. A test marked
``crosscheck`` (it compares against a PyTorch reference) is slow as well.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
from typing import Any, Iterator

# Most of the suite's time is XLA compiling small programs, so the tests compile them
# quickly: without XLA's backend optimisations (LLVM's expensive passes), and with
# XLA:CPU's older loop emitters instead of its MLIR fusion emitters. On two idle cores
# the first took the fast tier from 21 min 3 s to 11 min 3 s; the second cut the
# compilation of a PGD loop by 40 %. Both reach the subprocesses the tests start (CLI,
# workers), except the notebooks' kernels (``user_compilation``). Every test passes
# either way but one golden pin, which compiles with the backend optimisations on (the
# ``full_optimization`` marker). The slow tier's long computations (cross-checks,
# training runs, attacks of hundreds of steps) carry that marker too: on two cores of a
# Xeon, the slow tier took 19 min 16 s optimised throughout and 30 min 2 s unoptimised
# throughout, the cross-checks alone 3 to 40 times longer; unoptimised, most other slow
# tests took a third to a half less.
# JAXADV_TEST_FULL_OPTIMIZATION=1 compiles everything as a user's program would be.
_FAST_COMPILE = not os.environ.get("JAXADV_TEST_FULL_OPTIMIZATION")
# The environment as the user set it, kept across pytest-xdist's workers (which start from
# the environment this file has already changed in the main process).
os.environ.setdefault(
    "JAXADV_TEST_USER_ENV",
    json.dumps({name: os.environ.get(name) for name in ("XLA_FLAGS", "JAX_DISABLE_MOST_OPTIMIZATIONS")}),
)
_USER_ENV: dict[str, str | None] = json.loads(os.environ["JAXADV_TEST_USER_ENV"])
if _FAST_COMPILE:  # before JAX starts its backend, which reads XLA_FLAGS once
    os.environ["XLA_FLAGS"] = " ".join(
        f for f in (_USER_ENV["XLA_FLAGS"], "--xla_cpu_use_fusion_emitters=false") if f
    )
    os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402
import pytest  # noqa: E402
from small_models import Trained, trained_digits  # noqa: E402

from jaxadv import examples  # noqa: E402

jax.config.update("jax_disable_most_optimizations", _FAST_COMPILE)
jax.config.update("jax_numpy_rank_promotion", "allow")

# JAXADV_TEST_COMPILATION_CACHE=<dir>: keep this run's compilations in JAX's persistent cache
# there, and reuse earlier runs' (a second run of test_registry.py and test_attack_faults.py:
# 62 s instead of 245 s). Off by default: within one run it found few repeats and cost 20 %.
if os.environ.get("JAXADV_TEST_COMPILATION_CACHE"):
    jax.config.update("jax_compilation_cache_dir", os.environ["JAXADV_TEST_COMPILATION_CACHE"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# JAXADV_TEST_COMPILE_REPORT=<dir>: which programs XLA compiled during each test, and how
# long each took, one JSON file per worker ({test id: [[program, seconds], ...]}). Most of
# the suite's time is compilation; this says which tests pay it.
_COMPILES: dict[str, list[tuple[str, float]]] = {}
_CURRENT = ["(collection and fixtures outside a test)"]
if os.environ.get("JAXADV_TEST_COMPILE_REPORT"):

    def _on_compile(event: str, duration: float, **kwargs: Any) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            _COMPILES.setdefault(_CURRENT[0], []).append((str(kwargs.get("fun_name")), duration))

    jax.monitoring.register_event_duration_secs_listener(_on_compile)


def _set_optimised(on: bool) -> None:
    """Compile with XLA's backend optimisations on or off from here on. Clears JAX's caches
    when that changes, so that no program compiled the other way is reused; subprocesses
    started from here on inherit the setting."""
    if on == (not jax.config.read("jax_disable_most_optimizations")):
        return
    jax.clear_caches()
    jax.config.update("jax_disable_most_optimizations", not on)
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "0" if on else "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """A test marked ``full_optimization`` compiles with XLA's backend optimisations on,
    its fixtures included (they are set up inside this hook); the others compile fast
    unless ``JAXADV_TEST_FULL_OPTIMIZATION`` is set. Consecutive marked tests (a marked
    module) keep the setting and their compiled programs."""
    _CURRENT[0] = item.nodeid
    if _FAST_COMPILE:
        _set_optimised(item.get_closest_marker("full_optimization") is not None)
    yield


def pytest_sessionfinish(session: pytest.Session) -> None:
    out = os.environ.get("JAXADV_TEST_COMPILE_REPORT")
    if out and _COMPILES:
        path = pathlib.Path(out) / f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_COMPILES))


__all__ = ["Trained"]


@contextlib.contextmanager
def optimised() -> Iterator[None]:
    """Compile with XLA's backend optimisations on inside the block (see the top of this file)."""
    if not jax.config.read("jax_disable_most_optimizations"):
        yield
        return
    _set_optimised(True)
    try:
        yield
    finally:
        _set_optimised(False)


@pytest.fixture
def user_compilation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Subprocesses started by the test compile as a user's would (the environment as
    it was before this file changed it). For long computations, such as the notebooks':
    unoptimised, notebook 02's targeted sweep ran for over 9 minutes."""
    for name, value in _USER_ENV.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


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
