"""Gradient-free PGD (SPSA, NES): properties, exact query counts, linear-model checks, digits."""

from __future__ import annotations

from typing import Any

import hypothesis
import hypothesis.strategies as st
import jax
import numpy as np
import pytest
import small_models as sm

import jaxadv

ATTACKS = {"spsa": jaxadv.spsa, "nes": jaxadv.nes}


_W = sm.random_weights(0)
LINEAR = sm.model(_W)


def _images(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, size=(6, 8, 8, 1)).astype(np.float32)


@pytest.mark.slow
@hypothesis.settings(max_examples=10, deadline=None)
@hypothesis.given(
    seed=st.integers(0, 2**16),
    eps=st.floats(0.0, 1.0),
    case=st.sampled_from([("spsa", "linf"), ("nes", "l2")]),
)
def test_gradient_free_properties(seed: int, eps: float, case: tuple[str, str]) -> None:
    name, norm = case
    x = _images(seed)
    budget = 1 + 3 * 9  # three iterations of 2 * 4 + 1 queries
    r = ATTACKS[name](
        LINEAR, x, key=jax.random.key(seed), eps=eps, queries=budget, num_samples=4, norm=norm,
        return_info=True,
    )  # fmt: skip
    assert r.x_adv.shape == x.shape and r.x_adv.dtype == x.dtype
    assert np.all(np.isfinite(np.asarray(r.x_adv)))
    assert np.all(np.asarray(jaxadv.norm_of(r.x_adv - x, norm)) <= eps + 1e-5)
    assert np.all((np.asarray(r.x_adv) >= 0.0) & (np.asarray(r.x_adv) <= 1.0))
    q = np.asarray(r.queries)
    assert np.all((q >= 1) & (q <= budget))
    assert np.all((q - 1) % 9 == 0)  # the clean query, then whole iterations


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_gradient_free_linear_model(name: str) -> None:
    x = _images(1)
    y = np.asarray(jaxadv.predict(LINEAR, x))
    need = sm.distance_to_boundary(x, _W, "linf")
    budget = 1 + 10 * 17
    # Wide bounds, so that the box never binds and the distances are exact.
    kw: dict[str, Any] = dict(
        key=jax.random.key(0), queries=budget, num_samples=8, bounds=(-5.0, 5.0), return_info=True
    )
    # Below the exact distance to the boundary nothing can succeed; each example spends the budget.
    r = ATTACKS[name](LINEAR, x, y, eps=need * 0.99, **kw)
    assert not np.any(np.asarray(r.success))
    np.testing.assert_array_equal(np.asarray(r.queries), budget)
    # Well above it (the sign of an 8-sample estimate in 64 dimensions is noisy), the
    # estimated gradient of a linear model points the right way.
    r = ATTACKS[name](LINEAR, x, y, eps=need * 4.0, **kw)
    assert np.all(np.asarray(r.success))
    q = np.asarray(r.queries)
    assert np.all(q[np.asarray(r.success)] < budget)  # success stops the spending


def test_gradient_free_targeted_and_errors() -> None:
    x = _images(2)
    y = (np.asarray(jaxadv.predict(LINEAR, x)) + 1) % 4
    r = jaxadv.spsa(
        LINEAR, x, y, key=jax.random.key(0), eps=1.0, queries=1 + 10 * 17, num_samples=8, targeted=True,
        return_info=True,
    )  # fmt: skip
    assert np.mean(np.asarray(r.success)) >= 0.5
    np.testing.assert_array_equal(np.asarray(r.success), np.asarray(jaxadv.predict(LINEAR, r.x_adv)) == y)
    with pytest.raises(ValueError, match="queries"):
        jaxadv.nes(LINEAR, x, key=jax.random.key(0), eps=0.1, queries=10, num_samples=8)
    with pytest.raises(ValueError, match="num_samples"):
        jaxadv.nes(LINEAR, x, key=jax.random.key(0), eps=0.1, num_samples=0)


@pytest.mark.parametrize(("name", "alias", "default"), [("spsa", "delta", 0.01), ("nes", "sigma", 0.001)])
def test_fd_scale_default_and_the_removed_aliases(name: str, alias: str, default: float) -> None:
    attack, x = ATTACKS[name], _images(4)
    kw: dict[str, Any] = dict(key=jax.random.key(0), eps=0.1, queries=28, num_samples=4, return_info=True)
    # A scale large enough for the probes to reach the box: the estimate depends on it.
    ref = attack(LINEAR, x, fd_scale=0.3, **kw)
    dflt, explicit = attack(LINEAR, x, **kw), attack(LINEAR, x, fd_scale=default, **kw)
    np.testing.assert_array_equal(np.asarray(dflt.x_adv), np.asarray(explicit.x_adv))
    assert not np.array_equal(np.asarray(dflt.x_adv), np.asarray(ref.x_adv))
    for old in (alias, "samples"):
        with pytest.raises(TypeError, match=old):
            attack(LINEAR, x, **{old: 4}, **kw)


def test_gradient_free_black_box_model() -> None:
    def scores(a: np.ndarray) -> np.ndarray:
        return a.reshape(a.shape[0], -1) @ _W

    black_box = jaxadv.from_callable(scores, num_classes=4)
    x = _images(3)
    kw: dict[str, Any] = dict(key=jax.random.key(0), eps=0.2, queries=28, num_samples=4, return_info=True)
    r = jaxadv.spsa(black_box, x, **kw)
    ref = jaxadv.spsa(LINEAR, x, **kw)
    np.testing.assert_array_equal(np.asarray(r.queries), np.asarray(ref.queries))
    np.testing.assert_allclose(np.asarray(r.x_adv), np.asarray(ref.x_adv), atol=1e-5)


@pytest.mark.slow
def test_gradient_free_digits(cnn: Any, digits: Any) -> None:
    x, y = digits[1].x[:32], digits[1].y[:32]
    clean = float(np.mean(np.asarray(jaxadv.predict(cnn.logits_fn, x)) == y))
    r = jaxadv.nes(
        cnn.logits_fn, x, y, key=jax.random.key(0), eps=0.15, queries=500, num_samples=16, return_info=True
    )
    assert np.all(np.asarray(r.queries) <= 500)
    robust = 1.0 - float(np.mean(np.asarray(r.success)))
    assert robust < clean - 0.25, (robust, clean)
