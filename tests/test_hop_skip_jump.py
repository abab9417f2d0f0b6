"""HopSkipJump: properties, the exact distance bound of a linear model, labels-only models, digits."""

from __future__ import annotations

from typing import Any

import hypothesis
import hypothesis.strategies as st
import jax
import numpy as np
import pytest
import small_models as sm

import jaxadv

_W = sm.random_weights(0)
LINEAR = sm.model(_W)


def _images(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.3, 0.7, size=(6, 8, 8, 1)).astype(np.float32)


@pytest.mark.slow
@hypothesis.settings(max_examples=8, deadline=None)
@hypothesis.given(
    seed=st.integers(0, 2**16), budget=st.integers(2, 400), norm=st.sampled_from(["l2", "linf"])
)
def test_hop_skip_jump_properties(seed: int, budget: int, norm: str) -> None:
    x = _images(seed)
    r = jaxadv.hop_skip_jump(
        LINEAR, x, key=jax.random.key(seed), queries=budget, norm=norm, steps=3, return_info=True
    )
    assert r.x_adv.shape == x.shape and r.x_adv.dtype == x.dtype
    assert np.all(np.isfinite(np.asarray(r.x_adv)))
    assert np.all((np.asarray(r.x_adv) >= 0.0) & (np.asarray(r.x_adv) <= 1.0))
    q = np.asarray(r.queries)
    assert np.all((q >= 1) & (q <= budget))
    success = np.asarray(r.success)
    # The current point is always adversarial; without a start point the clean input comes back.
    y = np.asarray(jaxadv.predict(LINEAR, x))
    np.testing.assert_array_equal(success, np.asarray(jaxadv.predict(LINEAR, r.x_adv)) != y)
    np.testing.assert_array_equal(np.asarray(r.x_adv)[~success], x[~success])


@pytest.mark.slow
def test_hop_skip_jump_linear_distance() -> None:
    x = _images(1)
    need = sm.distance_to_boundary(x, _W, "l2")
    x_adv = jaxadv.hop_skip_jump(LINEAR, x, key=jax.random.key(0), queries=1500, norm="l2")
    assert np.all(np.asarray(jaxadv.is_adversarial(LINEAR, x_adv, jaxadv.predict(LINEAR, x))))
    dist = np.asarray(jaxadv.norm_of(x_adv - x, "l2"))
    assert np.all(dist >= need * (1 - 1e-4))  # no adversarial point is closer than the boundary
    assert np.median(dist / need) < 1.5, dist / need


@pytest.mark.slow
def test_hop_skip_jump_labels_only_and_gradient_free() -> None:
    def labels(a: np.ndarray) -> np.ndarray:
        return (a.reshape(a.shape[0], -1) @ _W).argmax(1)

    black_box = jaxadv.from_callable(labels, num_classes=4, returns="labels")
    x = _images(2)
    kw: dict[str, Any] = dict(key=jax.random.key(0), queries=300, norm="l2", steps=3, return_info=True)
    r = jaxadv.hop_skip_jump(black_box, x, **kw)
    ref = jaxadv.hop_skip_jump(LINEAR, x, **kw)
    np.testing.assert_array_equal(np.asarray(r.queries), np.asarray(ref.queries))
    np.testing.assert_allclose(np.asarray(r.x_adv), np.asarray(ref.x_adv), atol=1e-5)
    assert np.all(np.asarray(r.queries) <= 300)


@pytest.mark.slow
def test_hop_skip_jump_targeted() -> None:
    x = _images(3)
    pred = np.asarray(jaxadv.predict(LINEAR, x))
    with pytest.raises(ValueError, match="x_init"):
        jaxadv.hop_skip_jump(LINEAR, x, (pred + 1) % 4, key=jax.random.key(0), targeted=True)
    # Starting points: a strong push along each target's weight column.
    targets = (pred + 1) % 4
    direction = (_W[:, targets] - _W.mean(axis=1, keepdims=True)).T.reshape(x.shape)
    x_init = np.clip(x + 5.0 * direction, 0.0, 1.0)
    start_ok = np.asarray(jaxadv.predict(LINEAR, x_init)) == targets
    r = jaxadv.hop_skip_jump(
        LINEAR, x, targets, key=jax.random.key(0), queries=300, targeted=True, x_init=x_init, steps=3,
        return_info=True,
    )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(r.success), start_ok)
    moved = np.asarray(jaxadv.norm_of(r.x_adv - x, "l2")) < np.asarray(jaxadv.norm_of(x_init - x, "l2"))
    assert np.all(moved[start_ok])


# Slow tier: thousands of queries on the digits CNN.
@pytest.mark.slow
def test_hop_skip_jump_digits_shrinks_with_queries(cnn: Any, digits: Any) -> None:
    x, y = digits[1].x[:16], digits[1].y[:16]
    medians = []
    for budget in (300, 1500):
        # The same static steps for both budgets: one compilation; the smaller budget stops early.
        r = jaxadv.hop_skip_jump(
            cnn.logits_fn, x, y, key=jax.random.key(0), queries=budget, norm="l2", steps=10, return_info=True
        )
        assert np.all(np.asarray(r.queries) <= budget)
        success = np.asarray(r.success)
        assert success.mean() >= 0.9
        medians.append(float(np.median(np.asarray(jaxadv.norm_of(r.x_adv - x, "l2"))[success])))
    assert medians[1] < 0.9 * medians[0], medians
