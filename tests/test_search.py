"""The shared per-example searches of :mod:`jaxadv._core.search`, on predicates
whose answer is known: a threshold ``t*`` per example, ``hit = value >= t*``."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxadv._core.search import UNBOUNDED, bracket, midpoint, narrow

THRESHOLD = jnp.asarray([0.0, 0.1, 0.5, 0.73, 1.0], jnp.float32)


def test_bisection_brackets_the_threshold_and_halves_each_step() -> None:
    lower, upper = jnp.zeros(5), jnp.ones(5) * 1.0
    for step in range(1, 21):
        mid = midpoint(lower, upper)
        lower, upper = narrow(lower, upper, mid, mid >= THRESHOLD)
        np.testing.assert_allclose(np.asarray(upper - lower), 2.0**-step, rtol=1e-6)
    # The upper end always satisfies the predicate, the lower end never (but at 0, the start).
    assert bool(jnp.all(upper >= THRESHOLD))
    assert bool(jnp.all((lower < THRESHOLD) | (lower == 0.0)))
    np.testing.assert_allclose(np.asarray(upper), np.asarray(THRESHOLD), atol=2.0**-20)


def test_inactive_examples_keep_their_interval() -> None:
    lower, upper = jnp.zeros(5), jnp.ones(5)
    active = jnp.asarray([True, False, True, False, True])
    mid = midpoint(lower, upper)
    lo2, hi2 = narrow(lower, upper, mid, mid >= THRESHOLD, active)
    np.testing.assert_array_equal(np.asarray(lo2)[~np.asarray(active)], 0.0)
    np.testing.assert_array_equal(np.asarray(hi2)[~np.asarray(active)], 1.0)
    np.testing.assert_array_equal(np.asarray(hi2)[0], 0.5)  # 0.5 >= 0: the upper end moves
    np.testing.assert_array_equal(np.asarray(lo2)[4], 0.5)  # 0.5 < 1: the lower end moves


def test_bracketing_grows_tenfold_until_a_success_then_bisects() -> None:
    target = jnp.asarray([3e-3, 0.2, 7.0, 450.0], jnp.float32)  # the smallest constant that succeeds
    const = jnp.full(4, 1e-3, jnp.float32)
    lower, upper = jnp.zeros(4), jnp.full(4, UNBOUNDED, jnp.float32)
    # First steps: failures multiply the constant by ten, and no upper bound is known.
    const2, lower2, upper2 = bracket(const >= target, const, lower, upper)
    np.testing.assert_allclose(np.asarray(const2), 1e-2, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(lower2), 1e-3, rtol=1e-6)
    assert bool(jnp.all(upper2 == UNBOUNDED))
    for _ in range(60):
        const, lower, upper = bracket(const >= target, const, lower, upper)
    assert bool(jnp.all(upper < UNBOUNDED))
    np.testing.assert_allclose(np.asarray(upper), np.asarray(target), rtol=1e-4)
    assert bool(jnp.all(lower <= target)) and bool(jnp.all(upper >= target))
    # A success at the first constant bounds it at once, and the constant stays put until bisection.
    c, lo, hi = bracket(jnp.asarray([True]), jnp.asarray([5.0]), jnp.zeros(1), jnp.full(1, UNBOUNDED))
    assert float(hi[0]) == 5.0 and float(c[0]) == 2.5 and float(lo[0]) == 0.0
