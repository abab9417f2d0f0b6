"""Square Attack: ball, bounds and query-count properties, exact accounting, digits."""

from __future__ import annotations

from typing import Any

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import small_models as sm

import jaxadv


def _images(seed: int, n: int = 6, shape: tuple[int, ...] = (8, 8, 1)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, size=(n, *shape)).astype(np.float32)


LINEAR = sm.model(sm.random_weights(0))


@pytest.mark.slow
@hypothesis.settings(max_examples=12, deadline=None)
@hypothesis.given(
    seed=st.integers(0, 2**16),
    eps=st.floats(0.0, 2.0),
    case=st.sampled_from([("linf", False), ("l2", False), ("linf", True)]),
)
def test_square_properties(seed: int, eps: float, case: tuple[str, bool]) -> None:
    norm, targeted = case
    x = _images(seed)
    y = np.random.default_rng(seed).integers(0, 4, size=6).astype(np.int32)
    budget = 20
    r = jaxadv.square(
        LINEAR, x, y, key=jax.random.key(seed), eps=eps, queries=budget, norm=norm, targeted=targeted,
        return_info=True,
    )  # fmt: skip
    assert r.x_adv.shape == x.shape and r.x_adv.dtype == x.dtype
    assert np.all(np.isfinite(np.asarray(r.x_adv)))
    assert np.all(np.asarray(jaxadv.norm_of(r.x_adv - x, norm)) <= eps + 1e-5)
    assert np.all((np.asarray(r.x_adv) >= 0.0) & (np.asarray(r.x_adv) <= 1.0))
    q = np.asarray(r.queries)
    assert q.dtype == np.int32 and np.all((q >= 1) & (q <= budget))
    pred = np.asarray(jaxadv.predict(LINEAR, r.x_adv))
    expected = (pred == y) if targeted else (pred != y)
    np.testing.assert_array_equal(np.asarray(r.success), expected)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_square_query_accounting(norm: str) -> None:
    x = _images(1)
    pred = np.asarray(jaxadv.predict(LINEAR, x))
    # eps = 0: no proposal can succeed, so each example spends exactly the budget.
    r = jaxadv.square(
        LINEAR, x, pred, key=jax.random.key(0), eps=0.0, queries=15, norm=norm, return_info=True
    )
    np.testing.assert_array_equal(np.asarray(r.queries), 15)
    np.testing.assert_allclose(np.asarray(r.x_adv), x, atol=1e-7)
    assert not np.any(np.asarray(r.success))
    # Labels the model already disagrees with: one query (the clean input), returned unchanged.
    wrong = (pred + 1) % 4
    r = jaxadv.square(
        LINEAR, x, wrong, key=jax.random.key(0), eps=0.3, queries=15, norm=norm, return_info=True
    )
    np.testing.assert_array_equal(np.asarray(r.queries), 1)
    np.testing.assert_array_equal(np.asarray(r.x_adv), x)
    assert np.all(np.asarray(r.success))


@pytest.mark.parametrize("norm", ["linf", "l1"])
def test_square_linear_exact_bound(norm: str) -> None:
    """A linear model cannot be fooled below the exact distance to its boundary, and every
    example stays in its ball."""
    x = _images(2)
    w = np.asarray(LINEAR.args[0][0])
    y = (x.reshape(6, -1) @ w).argmax(1)
    need = sm.distance_to_boundary(x, w, norm)
    eps = need * 0.99
    x_adv = jaxadv.square(LINEAR, x, y, key=jax.random.key(0), eps=eps, queries=60, norm=norm)
    assert not np.any(np.asarray(jaxadv.is_adversarial(LINEAR, x_adv, y)))
    delta = np.abs(np.asarray(x_adv) - x).reshape(6, -1)
    size = delta.max(axis=1) if norm == "linf" else delta.sum(axis=1)
    assert np.all(size <= eps * (1 + 1e-5))
    assert np.any(size > 0.5 * eps)  # it did search, not stay at x


def test_square_jit_matches_host() -> None:
    x = _images(3)
    kw: dict[str, Any] = dict(key=jax.random.key(5), queries=25, return_info=True)
    f = jax.jit(lambda x, e: jaxadv.square(LINEAR, x, eps=e, **kw))
    a = f(x, 0.2)
    b = jaxadv.square(LINEAR, x, eps=0.2, loop="host", **kw)
    np.testing.assert_array_equal(np.asarray(a.queries), np.asarray(b.queries))
    np.testing.assert_allclose(np.asarray(a.x_adv), np.asarray(b.x_adv), atol=1e-6)


def test_square_nchw_layout() -> None:
    x = _images(4)
    x_nhwc = jaxadv.square(LINEAR, x, key=jax.random.key(0), eps=0.2, queries=10)
    # The same model seen through NCHW inputs.
    nchw = jaxadv.from_apply(_nchw_linear, LINEAR.args[0])
    x_nchw = jaxadv.square(
        nchw, np.transpose(x, (0, 3, 1, 2)), key=jax.random.key(0), eps=0.2, queries=10, channel_axis=1
    )
    np.testing.assert_allclose(np.transpose(np.asarray(x_nchw), (0, 2, 3, 1)), np.asarray(x_nhwc))


def _nchw_linear(params: Any, x: jax.Array) -> jax.Array:
    return sm.apply(params, jnp.transpose(x, (0, 2, 3, 1)))


def test_square_argument_errors() -> None:
    x = _images(0)
    with pytest.raises(ValueError, match="norm"):
        jaxadv.square(LINEAR, x, key=jax.random.key(0), eps=0.1, norm="l0")
    with pytest.raises(ValueError, match="queries"):
        jaxadv.square(LINEAR, x, key=jax.random.key(0), eps=0.1, queries=1)
    with pytest.raises(ValueError, match="image-shaped"):
        flat = jaxadv.from_apply(sm.apply, LINEAR.args[0])
        jaxadv.square(flat, x.reshape(6, -1), key=jax.random.key(0), eps=0.1)
    with pytest.raises(ValueError, match="eps"):
        jaxadv.square(LINEAR, x, key=jax.random.key(0), eps=-0.1)


def test_square_never_differentiates_the_model() -> None:
    w, b = (np.asarray(a) for a in LINEAR.args[0])

    def scores(a: np.ndarray) -> np.ndarray:
        return a.reshape(a.shape[0], -1) @ w + b

    black_box = jaxadv.from_callable(scores, num_classes=4)
    with pytest.raises(jaxadv.GradientNotAvailableError):
        jax.grad(lambda x: black_box(x).sum())(jnp.asarray(_images(0)))
    x = _images(5)
    r = jaxadv.square(black_box, x, key=jax.random.key(1), eps=0.3, queries=20, return_info=True)
    ref = jaxadv.square(LINEAR, x, key=jax.random.key(1), eps=0.3, queries=20, return_info=True)
    np.testing.assert_array_equal(np.asarray(r.queries), np.asarray(ref.queries))
    np.testing.assert_allclose(np.asarray(r.x_adv), np.asarray(ref.x_adv), atol=1e-6)


@pytest.mark.slow
def test_square_digits_improves_with_queries(cnn: Any, digits: Any) -> None:
    norm, eps = "linf", 0.1
    x, y = digits[1].x[:48], digits[1].y[:48]
    robust = []
    for budget in (100, 1000):
        r = jaxadv.square(
            cnn.logits_fn, x, y, key=jax.random.key(0), eps=eps, queries=budget, norm=norm, return_info=True
        )
        assert np.all(np.asarray(r.queries) <= budget)
        assert np.all(np.asarray(jaxadv.norm_of(r.x_adv - x, norm)) <= eps + 1e-5)
        robust.append(1.0 - float(np.mean(np.asarray(r.success))))
    clean = float(np.mean(np.asarray(jaxadv.predict(cnn.logits_fn, x)) == y))
    assert robust[0] < clean
    assert robust[1] < robust[0] - 0.05, robust
