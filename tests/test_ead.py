"""EAD: the shrinkage operator, the minimal L1 perturbation of a linear model, the decision rules."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest
import small_models as sm

import jaxadv
from jaxadv.attacks.ead import ead, shrink

FEATURES, CLASSES = 64, 4


@pytest.fixture(scope="module")
def linear() -> tuple[Any, np.ndarray, np.ndarray]:
    w = sm.random_weights(0, FEATURES, CLASSES)
    x = np.random.default_rng(1).uniform(0.3, 0.7, size=(8, FEATURES)).astype(np.float32)
    return sm.model(w), w, x


def _l1(d: Any) -> np.ndarray:
    return np.abs(np.asarray(d)).reshape(len(d), -1).sum(1)


def _l2sq(d: Any) -> np.ndarray:
    return (np.asarray(d) ** 2).reshape(len(d), -1).sum(1)


def test_shrinkage_operator_is_the_paper_piecewise_map() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, size=(3, 50)).astype(np.float32)
    u = x + rng.normal(scale=0.3, size=x.shape).astype(np.float32)
    beta = 0.1
    got = np.asarray(
        shrink(jnp.asarray(u), jnp.asarray(x), jnp.float32(beta), jnp.float32(0), jnp.float32(1))
    )
    want = np.where(
        u - x > beta, np.minimum(u - beta, 1.0), np.where(u - x < -beta, np.maximum(u + beta, 0.0), x)
    )
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_iterates_match_a_numpy_fista_on_a_linear_model(linear: Any) -> None:
    # Logits x @ W: the gradient of h(v) = c max(z_y - z_j*, -kappa) + ||v - x||^2, j* the
    # best other class, is c (w_y - w_j*) [margin > -kappa] + 2 (v - x). One search step
    # of K iterations replayed in NumPy: step size decay, shrinkage, slack with momentum
    # k / (k + 3), the L1 decision rule.
    f, w, x = linear
    y = np.asarray(jaxadv.predict(f, x))
    c, lr, beta, k_max = 2.0, 0.05, 0.01, 30
    kw = dict(l1_weight=beta, learning_rate=lr, steps=k_max, binary_search_steps=1, initial_const=c)
    out = np.asarray(ead(f, x, y, decision_rule="l1", **kw))  # type: ignore[arg-type]
    want = x.copy()
    w64 = w.astype(np.float64)
    for i in range(len(x)):
        xk = vk = x[i].astype(np.float64)
        best = np.inf
        for k in range(k_max):
            z = vk @ w64
            j = np.argmax(np.where(np.arange(CLASSES) == y[i], -np.inf, z))
            grad = c * (w64[:, y[i]] - w64[:, j]) * (z[y[i]] > z[j]) + 2 * (vk - x[i])
            d = vk - lr * np.sqrt(1 - k / k_max) * grad - x[i]
            new = np.clip(x[i] + np.sign(d) * np.maximum(np.abs(d) - beta, 0), 0, 1)
            vk, xk = new + k / (k + 3) * (new - xk), new
            l1 = np.abs(new - x[i]).sum()
            if np.argmax(new @ w64) != y[i] and l1 < best:
                best, want[i] = l1, new
    assert np.sum(np.any(want != x, axis=1)) >= len(x) // 2
    np.testing.assert_allclose(out, want, atol=2e-5)


def test_linear_model_minimal_l1_and_the_two_decision_rules(linear: Any) -> None:
    f, w, x = linear
    y = np.asarray(jaxadv.predict(f, x))
    exact = sm.distance_to_boundary(x, w, "l1")  # one coordinate each; fits in the box
    bounds = (-1.0, 2.0)
    kw = dict(
        l1_weight=5e-2, steps=100, binary_search_steps=9, initial_const=0.1, bounds=bounds, return_info=True
    )
    by_l1 = ead(f, x, y, decision_rule="l1", **kw)
    by_en = ead(f, x, y, decision_rule="EN", **kw)
    for r in (by_l1, by_en):
        assert bool(jnp.all(r.success))
        assert float(jnp.min(r.x_adv)) >= bounds[0] and float(jnp.max(r.x_adv)) <= bounds[1]
    d1, de = np.asarray(by_l1.x_adv) - x, np.asarray(by_en.x_adv) - x
    # Never below the exact minimum; close to it and sparse with the L1 rule.
    assert np.all(_l1(d1) >= exact * (1 - 1e-4))
    assert np.all(_l1(d1) <= 1.15 * exact), _l1(d1) / exact
    assert np.mean(np.sum(np.abs(d1) > 1e-6, axis=1)) <= FEATURES / 4
    # Both rules choose among the same iterates (the rule does not steer the
    # optimisation): each is best under its own distance, and they differ.
    beta = kw["l1_weight"]
    assert np.all(_l1(d1) <= _l1(de) + 1e-5)
    assert np.all(_l2sq(de) + beta * _l1(de) <= _l2sq(d1) + beta * _l1(d1) + 1e-5)
    assert np.any(np.abs(_l1(d1) - _l1(de)) > 1e-3)


def test_targeted_reaches_the_targets_and_larger_beta_is_sparser(linear: Any) -> None:
    f, _, x = linear
    y = np.asarray(jaxadv.predict(f, x))
    t = ((y + 1) % CLASSES).astype(np.int32)
    kw = dict(targeted=True, decision_rule="l1", steps=50, binary_search_steps=6, initial_const=0.1)
    sparse = ead(f, x, t, l1_weight=5e-2, return_info=True, **kw)
    dense = ead(f, x, t, l1_weight=1e-3, return_info=True, **kw)
    assert bool(jnp.all(sparse.success)) and bool(jnp.all(dense.success))
    assert float(jnp.min(sparse.x_adv)) >= 0.0 and float(jnp.max(sparse.x_adv)) <= 1.0
    nnz = [np.sum(np.abs(np.asarray(r.x_adv) - x) > 1e-6) for r in (sparse, dense)]
    assert nnz[0] < nnz[1] / 2, nnz


def test_bad_input_empty_batch_and_non_finite_logits(linear: Any) -> None:
    f, _, x = linear
    y = np.asarray(jaxadv.predict(f, x))
    with pytest.raises(ValueError, match="decision_rule"):
        ead(f, x, y, decision_rule="l2")
    with pytest.raises(ValueError, match="l1_weight must be >= 0"):
        ead(f, x, y, l1_weight=-1.0)
    with pytest.raises(ValueError, match="learning_rate must be >= 0"):
        ead(f, x, y, learning_rate=-1.0)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        ead(f, x, y, steps=0)
    with pytest.raises(ValueError, match="l1_weight must be a scalar or have shape"):
        ead(f, x, y, l1_weight=jnp.ones(3))
    with pytest.raises(ValueError, match="y is required"):
        ead(f, x, None, targeted=True)
    assert ead(f, x[:0], y[:0]).shape == (0, FEATURES)

    # Logits that are NaN/inf for some examples (and finite for the others).
    g = jaxadv.from_apply(sm.nan_or_inf_rows_apply, jnp.asarray(linear[1]))
    xs = x.copy()
    xs[:4, 0] = 0.9
    xs[4:, 0] = 0.1
    out = ead(g, xs, None, steps=10, binary_search_steps=2, initial_const=1.0, return_info=True)
    assert np.all(np.isfinite(np.asarray(out.x_adv)))
    np.testing.assert_array_equal(np.asarray(out.x_adv[:4]), xs[:4])
    assert not bool(jnp.any(out.success[:4]))
