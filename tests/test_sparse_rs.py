"""Sparse-RS: the threat models (L0 pixels, one patch, a frame), corners, query accounting, digits.

Every test here shares a handful of compiled programs: the linear models all have
the structure of ``small_models.apply`` with ``[64, 4]`` weights (their values are
traced), and each threat runs with one ``k``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import small_models as sm

import jaxadv
from jaxadv.attacks.sparse_rs import sparse_rs

LINEAR = sm.model(sm.random_weights(0))
SUPPORT = (9, 22, 45, 60)  # the pixels the sparse model reads
K_L0, K_PATCH, K_FRAME = 3, 3, 1


def _images(seed: int, n: int = 6, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(lo, hi, size=(n, 8, 8, 1)).astype(np.float32)


def _changed(x_adv: Any, x: np.ndarray) -> np.ndarray:
    """``[b, H, W]`` bool: the pixels (any channel) where ``x_adv`` differs from ``x``."""
    return np.any(np.asarray(x_adv) != x, axis=-1)


def _sparse_model(needed: int) -> Any:
    r"""Four classes; class 1 reads only the pixels of ``SUPPORT``: :math:`z_1 = \sum_S x_j - c`,
    :math:`z_0 = 0`, classes 2 and 3 far below. At ``x_S = 0.2`` class 0 wins, and raising
    ``n`` pixels of ``S`` to 1 gives :math:`z_1 = 0.8 + 0.8 n - c`: with
    :math:`c = 0.8 + 0.8\,\mathrm{needed} - 0.4` the model is fooled exactly when
    ``n >= needed`` (a margin of 0.4 either side)."""
    w = np.zeros((64, 4), np.float32)
    w[list(SUPPORT), 1] = 1.0
    c = 0.8 + 0.8 * needed - 0.4
    return jaxadv.from_apply(sm.apply, (jnp.asarray(w), jnp.asarray([0.0, -c, -10.0, -10.0])))


def _sparse_inputs(n: int = 6) -> np.ndarray:
    x = _images(7, n)
    x.reshape(n, 64)[:, list(SUPPORT)] = 0.2
    return x


# --- threat models, corners, bounds, dtype -------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("threat", "k"), [("l0", K_L0), ("patch", K_PATCH), ("frame", K_FRAME)])
def test_threat_model_corners_and_bounds(threat: str, k: int, seed: int) -> None:
    lo, hi = 0.1, 0.9
    x = _images(seed, lo=lo, hi=hi)
    y = np.random.default_rng(seed).integers(0, 4, size=6).astype(np.int32)
    budget = 40
    r = sparse_rs(
        LINEAR, x, y, key=jax.random.key(seed), k=k, threat=threat, queries=budget, bounds=(lo, hi),
        return_info=True,
    )  # fmt: skip
    x_adv = np.asarray(r.x_adv)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert np.all((x_adv >= lo) & (x_adv <= hi))
    changed = _changed(x_adv, x)
    # Every changed value sits at a corner of the box.
    assert np.all(np.isin(x_adv[changed], [np.float32(lo), np.float32(hi)]))
    for i in range(len(x)):
        rows, cols = np.nonzero(changed[i])
        if threat == "l0":
            assert len(rows) <= k
        elif threat == "patch" and len(rows):
            assert rows.max() - rows.min() < k and cols.max() - cols.min() < k
        elif threat == "frame":
            border = np.minimum(np.minimum(rows, 7 - rows), np.minimum(cols, 7 - cols))
            assert np.all(border < k)
    q = np.asarray(r.queries)
    assert q.dtype == np.int32 and np.all((q >= 1) & (q <= budget))
    # Stopped examples spent fewer queries than the budget only by succeeding (or being
    # misclassified already: one query).
    pred = np.asarray(jaxadv.predict(LINEAR, x_adv))
    np.testing.assert_array_equal(np.asarray(r.success), pred != y)
    assert np.all(np.asarray(r.success) | (q == budget))


def test_start_point_and_dtype() -> None:
    # Two queries: the clean input and the random start, k pixels at random corners.
    x = _images(3).astype(np.float16)
    r = sparse_rs(LINEAR, x, key=jax.random.key(1), k=K_L0, queries=2, return_info=True)
    assert r.x_adv.dtype == np.float16 and r.x_adv.shape == x.shape
    changed = _changed(r.x_adv, x)
    assert np.all(changed.reshape(6, -1).sum(1) <= K_L0)
    assert np.all(np.isin(np.asarray(r.x_adv)[changed], [0.0, 1.0]))
    assert np.all(np.asarray(r.queries) <= 2)


def test_deterministic_per_key() -> None:
    x = _images(4)
    run = lambda seed: sparse_rs(LINEAR, x, key=jax.random.key(seed), k=K_L0, queries=30, return_info=True)  # noqa: E731
    a, b, c = run(0), run(0), run(1)
    np.testing.assert_array_equal(np.asarray(a.x_adv), np.asarray(b.x_adv))
    np.testing.assert_array_equal(np.asarray(a.queries), np.asarray(b.queries))
    assert not np.array_equal(np.asarray(a.x_adv), np.asarray(c.x_adv))


# --- the sparse linear model: exact thresholds and query accounting ------------


def test_finds_the_pixels_that_matter() -> None:
    """``k = 3`` pixels suffice when 3 are needed and the search finds them among 64;
    when 4 are needed, no 3 pixels can fool the model and the whole budget is spent."""
    x = _sparse_inputs()
    y = np.zeros(6, np.int32)
    budget = 2000
    ok = sparse_rs(_sparse_model(3), x, y, key=jax.random.key(0), k=K_L0, queries=budget, return_info=True)
    assert np.all(np.asarray(ok.success))
    on_support = np.asarray(ok.x_adv).reshape(6, 64)[:, list(SUPPORT)]
    assert np.all((on_support == 1.0).sum(1) >= 3)
    assert np.all(_changed(ok.x_adv, x).reshape(6, -1).sum(1) <= K_L0)
    assert np.all(np.asarray(ok.queries) < budget)

    no = sparse_rs(_sparse_model(4), x, y, key=jax.random.key(0), k=K_L0, queries=300, return_info=True)
    assert not np.any(np.asarray(no.success))
    np.testing.assert_array_equal(np.asarray(no.queries), 300)


def test_queries_stop_when_fooled() -> None:
    """With ``k = 3`` and ``p_init = 0.3`` every iteration swaps one pixel, whatever the
    budget, so a run is a prefix of a longer one: an example fooled at query ``q`` is
    fooled, with ``q`` queries, under a budget of ``q``, and not under ``q - 1``."""
    x = _sparse_inputs()
    y = np.zeros(6, np.int32)
    model = _sparse_model(3)

    def run(budget: int) -> Any:
        return sparse_rs(
            model, x, y, key=jax.random.key(0), k=K_L0, queries=budget, p_init=0.3, return_info=True
        )

    long = run(2000)
    q = np.asarray(long.queries)
    assert np.all(np.asarray(long.success))
    j = int(np.argmax(q))
    exact = run(int(q[j]))
    np.testing.assert_array_equal(np.asarray(exact.queries), q)
    np.testing.assert_array_equal(np.asarray(exact.x_adv), np.asarray(long.x_adv))
    short = run(int(q[j]) - 1)
    assert not np.asarray(short.success)[j] and np.asarray(short.queries)[j] == q[j] - 1
    # Examples the model already misclassifies: one query, returned unchanged.
    r = sparse_rs(model, x, np.ones(6, np.int32), key=jax.random.key(0), k=K_L0, queries=50, return_info=True)
    np.testing.assert_array_equal(np.asarray(r.queries), 1)
    np.testing.assert_array_equal(np.asarray(r.x_adv), x)
    assert np.all(np.asarray(r.success))


def test_targeted() -> None:
    x = _sparse_inputs()
    r = sparse_rs(
        _sparse_model(3), x, np.ones(6, np.int32), key=jax.random.key(0), k=K_L0, queries=2000,
        targeted=True, return_info=True,
    )  # fmt: skip
    assert np.all(np.asarray(jaxadv.predict(_sparse_model(3), r.x_adv)) == 1)
    assert np.all(np.asarray(r.success))


# --- non-finite scores, empty batch, bad input ---------------------------------


def test_non_finite_scores() -> None:
    x = _images(5)
    w = np.asarray(sm.random_weights(0)).copy()
    # NaN scores everywhere: every example stops after the clean query, unchanged.
    nan_model = sm.model(np.full_like(w, np.nan))
    r = sparse_rs(
        nan_model, x, np.zeros(6, np.int32), key=jax.random.key(0), k=K_L0, queries=20, return_info=True
    )
    np.testing.assert_array_equal(np.asarray(r.x_adv), x)
    np.testing.assert_array_equal(np.asarray(r.queries), 1)
    assert not np.any(np.asarray(r.success))
    # Finite at x, +inf for class 2 as soon as two chosen pixels are raised: such
    # candidates are never taken, and nothing is NaN.
    w[:, 2] = 0.0
    w[:8, 2] = 3e38
    x[:, 0, :, :] = 0.0
    big = sm.model(w)
    y = np.asarray(jaxadv.predict(big, x))
    r = sparse_rs(big, x, y, key=jax.random.key(0), k=K_L0, queries=60, return_info=True)
    assert np.all(np.isfinite(np.asarray(r.x_adv)))
    success = np.asarray(r.success)
    np.testing.assert_array_equal(success, np.asarray(jaxadv.is_adversarial(big, r.x_adv, y)))
    assert np.all(np.isfinite(np.asarray(big(jnp.asarray(r.x_adv)))[success]))


def test_empty_batch() -> None:
    x = np.zeros((0, 8, 8, 1), np.float32)
    r = sparse_rs(LINEAR, x, key=jax.random.key(0), k=K_L0, queries=10, return_info=True)
    assert r.x_adv.shape == x.shape and r.success.shape == (0,) and r.queries.shape == (0,)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threat": "l1"}, "threat"),
        ({"k": 0}, "k"),
        ({"k": 65}, "k"),
        ({"k": 9, "threat": "patch"}, "k"),
        ({"k": 2.0}, "k"),
        ({"loss": "no such loss"}, "loss"),
        ({"p_init": 0.0}, "p_init"),
        ({"p_init": 1.5}, "p_init"),
        ({"queries": 1}, "queries"),
        ({"key": None}, "key"),
        ({"channel_axis": 2}, "channel_axis"),
    ],
)
def test_bad_input(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"key": jax.random.key(0), "k": 3, "queries": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        sparse_rs(LINEAR, _images(0), **args)


def test_flat_inputs_refused() -> None:
    with pytest.raises(ValueError, match="image-shaped"):
        sparse_rs(LINEAR, _images(0).reshape(6, 64), key=jax.random.key(0), k=3)


# --- the digits CNN ------------------------------------------------------------


@pytest.mark.slow
def test_digits_cnn_beats_random_pixels(cnn: Any, digits: Any) -> None:
    """With ``k = 4`` pixels and 200 queries the search fools far more test digits than
    ``k`` random pixels at random corners (the start point alone, ``queries=2``)."""
    test = digits[1]
    x, y = jnp.asarray(test.x[:64]), jnp.asarray(test.y[:64])
    keep = np.asarray(jaxadv.predict(cnn.logits_fn, x)) == np.asarray(y)
    x, y = x[keep], y[keep]
    r = sparse_rs(cnn.logits_fn, x, y, key=jax.random.key(0), k=4, queries=200, return_info=True)
    rate = float(np.mean(np.asarray(r.success)))
    random_rate = np.mean(
        [
            np.mean(
                np.asarray(
                    sparse_rs(
                        cnn.logits_fn, x, y, key=jax.random.key(s), k=4, queries=2, return_info=True
                    ).success
                )
            )
            for s in range(5)
        ]
    )
    assert np.all(_changed(r.x_adv, np.asarray(x)).reshape(len(x), -1).sum(1) <= 4)
    np.testing.assert_array_equal(
        np.asarray(r.success), np.asarray(jaxadv.is_adversarial(cnn.logits_fn, r.x_adv, y))
    )
    assert rate >= 0.8 and rate > random_rate + 0.5, (rate, random_rate)
