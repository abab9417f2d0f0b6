"""JSMA: the pair search against brute force, the order of features on linear models, targets, errors."""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import small_models as sm

import jaxadv
from jaxadv.attacks.jsma import best_pair, jsma

FEATURES, CLASSES = 16, 3


def _brute_force(a: np.ndarray, b: np.ndarray, domain: np.ndarray) -> tuple[int, int] | None:
    best: tuple[float, int, int] | None = None
    for p, q in itertools.combinations(range(len(a)), 2):
        alpha, beta = a[p] + a[q], b[p] + b[q]
        if domain[p] and domain[q] and alpha > 0 and beta < 0:
            if best is None or alpha * -beta > best[0]:
                best = (alpha * -beta, p, q)
    return None if best is None else (best[1], best[2])


@pytest.mark.parametrize("block", [None, 3])
def test_best_pair_is_the_brute_force_maximum(block: int | None) -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(10, 23)).astype(np.float32)
    b = rng.normal(size=(10, 23)).astype(np.float32)
    domain = rng.uniform(size=(10, 23)) < 0.9
    domain[9] = False  # nothing admissible
    domain[9, 2] = True  # a single feature: no pair
    p, q, found = best_pair(jnp.asarray(a), jnp.asarray(b), jnp.asarray(domain), block=block)
    for i in range(10):
        want = _brute_force(a[i], b[i], domain[i])
        assert bool(found[i]) == (want is not None)
        if want is not None:
            assert (int(p[i]), int(q[i])) == want


@pytest.fixture(scope="module")
def linear() -> tuple[Any, np.ndarray, np.ndarray]:
    w = sm.random_weights(3, FEATURES, CLASSES)
    x = np.random.default_rng(1).uniform(0.0, 0.6, size=(6, FEATURES)).astype(np.float32)
    return sm.model(w), w, x


def test_first_pair_on_a_linear_model_is_the_most_salient(linear: Any) -> None:
    # On a linear model J = W^T everywhere: alpha, beta of every pair are known, and
    # with theta = 1 and one step (gamma = 2 / n) the two changed features must be
    # the brute-force best pair; they move to the upper bound.
    f, w, x = linear
    y = np.asarray(jaxadv.predict(f, x))
    t = ((y + 1) % CLASSES).astype(np.int32)
    out = np.asarray(jsma(f, x, t, targeted=True, theta=1.0, gamma=2 / FEATURES, loop="host"))
    for i in range(len(x)):
        a = w[:, t[i]]
        want = _brute_force(a, w.sum(1) - a, x[i] < 1.0)
        assert want is not None
        assert tuple(np.flatnonzero(out[i] != x[i])) == want
        np.testing.assert_array_equal(out[i][list(want)], 1.0)


def test_two_class_linear_model_changes_largest_weight_differences_first() -> None:
    # Logits (-v.x, v.x): for the target 1, alpha_pq = v_p + v_q, beta_pq = -alpha_pq,
    # so the saliency is alpha_pq^2 over pairs with alpha_pq > 0: after k steps the
    # changed features are the 2k largest w_target - w_y = 2 v (all positive here).
    v = np.array([0.3, -2.0, 0.9, 0.1, 0.5, -3.0, 0.7, 0.2, -2.5, 0.4, 0.8, -1.0], np.float32)
    f = jaxadv.from_apply(sm.antisymmetric_apply, jnp.asarray(v))
    x = np.where(v < 0, 0.9, 0.0).astype(np.float32)[None]
    t = np.ones(1, np.int32)
    order = np.argsort(-v)
    for k in (1, 2, 3):
        out = np.asarray(jsma(f, x, t, targeted=True, gamma=2 * k / len(v), loop="host"))
        assert int(jaxadv.predict(f, out)[0]) == 0  # not reached: every step ran
        assert set(np.flatnonzero(out[0] != x[0])) == set(order[: 2 * k])


def test_targets_reached_untargeted_and_decreasing(linear: Any) -> None:
    f, _, x = linear
    y = np.asarray(jaxadv.predict(f, x))
    t = ((y + 1) % CLASSES).astype(np.int32)
    t[0] = y[0]  # already the target: returned unchanged
    out = jsma(f, x, t, targeted=True, gamma=1.0, loop="host", return_info=True)
    assert bool(jnp.all(out.success))
    adv = np.asarray(out.x_adv)
    np.testing.assert_array_equal(adv[0], x[0])
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    changed = adv != x
    assert np.all(adv[changed] == 1.0)  # theta = 1 saturates each chosen feature
    # Untargeted: towards the most likely other class, success as soon as y is left.
    un = jsma(f, x, y, gamma=1.0, loop="host", return_info=True)
    assert bool(jnp.all(un.success))
    # theta < 0: features only decrease, by multiples of |theta| (a feature stays in
    # the domain until it reaches the lower bound) or down to the bound.
    dec = np.asarray(jsma(f, x, t, targeted=True, theta=-0.25, gamma=1.0, loop="host"))
    assert np.all(dec <= x) and np.any(dec < x)
    drop = (x - dec) / 0.25
    assert np.all((dec == 0.0) | (np.abs(drop - np.round(drop)) < 1e-4))


def test_bad_input_empty_batch_and_non_finite_logits(linear: Any) -> None:
    f, _, x = linear
    t = np.zeros(len(x), np.int32)
    for gamma in (0.0, 1.5, "0.1", True):
        with pytest.raises(ValueError, match="gamma"):
            jsma(f, x, t, targeted=True, gamma=gamma)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="theta must be finite and nonzero"):
        jsma(f, x, t, targeted=True, theta=0.0)
    # One-hot labels are the integer labels (as in every attack).
    np.testing.assert_array_equal(
        np.asarray(jsma(f, x, jax.nn.one_hot(t, CLASSES), targeted=True)),
        np.asarray(jsma(f, x, t, targeted=True)),
    )
    with pytest.raises(ValueError, match="y is required"):
        jsma(f, x, None, targeted=True)
    with pytest.raises(ValueError, match=r"y must hold labels in \[0, 3\)"):
        jsma(f, x, t + CLASSES, targeted=True)
    assert jsma(f, x[:0], t[:0], targeted=True).shape == (0, FEATURES)
    # gamma * n / 2 < 1: no step is allowed, x comes back.
    np.testing.assert_array_equal(np.asarray(jsma(f, x, t, targeted=True, gamma=1 / FEATURES)), x)

    g = jaxadv.from_apply(sm.nonfinite_apply, jnp.asarray(linear[1]))
    out = jsma(g, x, t + 1, targeted=True, gamma=0.5, return_info=True)
    np.testing.assert_array_equal(np.asarray(out.x_adv), x)
    assert not bool(jnp.any(out.success))
