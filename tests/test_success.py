"""Success masks and the properties shared by every strong attack (ball, bounds, NaN, dtype)."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxadv
from jaxadv.success import as_returned


def _mlp_apply(params: Any, x: jax.Array) -> jax.Array:
    w1, w2 = params
    return jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2


def _model(seed: int) -> Any:
    k1, k2 = jax.random.split(jax.random.key(seed))
    w1 = jax.random.normal(k1, (12, 16)) * 2.0
    w2 = jax.random.normal(k2, (16, 5))
    return jaxadv.from_apply(_mlp_apply, (w1, w2))


# One line per attack: (name, call, norm of its ball or None when it has no eps).
Attack = Callable[..., jax.Array]
ATTACKS: list[tuple[str, Attack, str | None]] = [
    ("mifgsm", lambda f, x, y, k, e, b: jaxadv.mifgsm(f, x, y, eps=e, steps=3, bounds=b), "linf"),
    (
        "di-mifgsm-l2",
        lambda f, x, y, k, e, b: jaxadv.mifgsm(
            f, x.reshape(-1, 3, 4, 1), y, eps=e, steps=3, norm="l2", bounds=b, diversity_prob=0.7, key=k
        ).reshape(x.shape),
        "l2",
    ),
    ("apgd-ce", lambda f, x, y, k, e, b: jaxadv.apgd(f, x, y, key=k, eps=e, steps=4, bounds=b), "linf"),
    (
        "apgd-dlr-l2",
        lambda f, x, y, k, e, b: jaxadv.apgd(f, x, y, key=k, eps=e, steps=4, norm="l2", loss="dlr", bounds=b),
        "l2",
    ),
    (
        "apgd-t",
        lambda f, x, y, k, e, b: jaxadv.apgd_targeted(
            f, x, y, key=k, eps=e, steps=3, num_target_classes=2, bounds=b
        ),
        "linf",
    ),
    ("deepfool", lambda f, x, y, k, e, b: jaxadv.deepfool(f, x, y, steps=4, bounds=b), None),
    (
        "deepfool-linf",
        lambda f, x, y, k, e, b: jaxadv.deepfool(f, x, y, steps=4, norm="linf", bounds=b),
        None,
    ),
    (
        "cw",
        lambda f, x, y, k, e, b: jaxadv.cw_l2(
            f, x, y, steps=10, binary_search_steps=2, initial_const=10.0, bounds=b
        ),
        None,
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,attack,norm", ATTACKS, ids=[a[0] for a in ATTACKS])
@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    eps=st.floats(0.0, 1.0),
    lo=st.sampled_from([0.0, -1.0]),
    width=st.sampled_from([1.0, 0.5]),
)
def test_inside_ball_and_bounds_no_nan(
    name: str, attack: Attack, norm: str | None, seed: int, eps: float, lo: float, width: float
) -> None:
    del name
    f = _model(seed % 7)
    key = jax.random.key(seed)
    x = jax.random.uniform(key, (6, 12), minval=lo, maxval=lo + width)
    y = jax.random.randint(jax.random.fold_in(key, 1), (6,), 0, 5)
    out = attack(f, x, y, key, eps, (lo, lo + width))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert bool(jnp.all(jnp.isfinite(out)))
    assert bool(jnp.all((out >= lo) & (out <= lo + width)))
    if norm is not None:
        assert bool(jnp.all(jaxadv.norm_of(out - x, norm) <= eps + 1e-5))


LOW_PRECISION = [a for a in ATTACKS if a[0] in ("di-mifgsm-l2", "apgd-ce", "apgd-t", "deepfool", "cw")]


@pytest.mark.slow
@pytest.mark.parametrize("name,attack,norm", LOW_PRECISION, ids=[a[0] for a in LOW_PRECISION])
def test_low_precision_inputs(name: str, attack: Attack, norm: str | None) -> None:
    # In float16 the mask must still agree with re-predicting the returned examples,
    # and success found inside the loop (on dtype-rounded iterates) must survive.
    del name
    f = _model(3)
    key = jax.random.key(0)
    x = jax.random.uniform(key, (8, 12)).astype(jnp.float16)
    y = jnp.argmax(jaxadv.logits(f, x.astype(jnp.float32)), -1)
    res = jaxadv.with_success(lambda f_, x_, y_: attack(f_, x_, y_, key, 0.5, (0.0, 1.0)))(f, x, y)
    assert res.x_adv.dtype == jnp.float16
    np.testing.assert_array_equal(res.success, jaxadv.predict(f, res.x_adv) != y)
    assert bool(jnp.any(res.success))
    if norm is not None:
        assert bool(
            jnp.all(jaxadv.norm_of(res.x_adv.astype(jnp.float32) - x.astype(jnp.float32), norm) <= 0.5 + 1e-3)
        )


def test_as_returned_is_what_finalize_returns() -> None:
    x = jnp.linspace(-0.3, 1.3, 97, dtype=jnp.float32).reshape(1, 97) + 1e-4
    lo, hi = jnp.float32(0.0), jnp.float32(1.0)
    for dtype in (jnp.float32, jnp.float16, jnp.bfloat16):
        p = jaxadv.attacks.base.Problem(
            None, [], x, jnp.zeros(1, jnp.int32), lo, hi, jnp.float32(0), dtype, 2
        )  # type: ignore[arg-type]
        np.testing.assert_array_equal(as_returned(x, dtype, lo, hi), p.finalize(x).astype(jnp.float32))


@pytest.mark.slow
def test_is_adversarial_and_with_success() -> None:
    f = _model(0)
    x = jax.random.uniform(jax.random.key(0), (10, 12))
    pred = jaxadv.predict(f, x)
    np.testing.assert_array_equal(jaxadv.is_adversarial(f, x, pred), np.zeros(10, bool))
    np.testing.assert_array_equal(jaxadv.is_adversarial(f, x, pred, targeted=True), np.ones(10, bool))
    other = (pred + 1) % 5
    np.testing.assert_array_equal(jaxadv.is_adversarial(f, x, jax.nn.one_hot(other, 5)), np.ones(10, bool))
    # y=None: labels are the clean predictions, as inside the attack.
    res = jaxadv.with_success(jaxadv.pgd)(f, x, key=jax.random.key(1), eps=0.3, steps=5)
    np.testing.assert_array_equal(res.success, jaxadv.predict(f, res.x_adv) != pred)
    jitted = jax.jit(
        lambda e: jaxadv.with_success(jaxadv.apgd)(f, x, pred, key=jax.random.key(1), eps=e, steps=3)
    )
    r = jitted(0.3)
    np.testing.assert_array_equal(r.success, jaxadv.predict(f, r.x_adv) != pred)
    t = jax.jit(
        lambda e: jaxadv.apgd_targeted(
            f, x, pred, key=jax.random.key(1), eps=e, steps=3, num_target_classes=2
        )
    )
    out = t(jnp.float32(0.3))
    assert float(jnp.max(jnp.abs(out - x))) <= 0.3 + 1e-6
    assert float(jnp.mean(jaxadv.is_adversarial(f, out, pred))) > 0
