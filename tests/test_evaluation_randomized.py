"""``evaluate(..., randomized=True)`` and the ``"rand"`` suite on a randomised model.

The model is the digits MLP behind Gaussian input noise, ``f(x, key) = mlp(x + s
* n)`` with ``n ~ N(0, I)`` drawn from ``key``: a stand-in for a randomised
defence. Success is judged on one draw of the model per batch.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxadv
from jaxadv.evaluation import SuiteAttack

N, EPS, NOISE = 48, 0.1, 0.1


@pytest.fixture(scope="module")
def noisy(mlp: Any) -> Any:
    def f(x: jax.Array, key: jax.Array) -> jax.Array:
        return mlp.logits_fn(x + NOISE * jax.random.normal(key, x.shape, x.dtype))

    return f


@pytest.fixture(scope="module")
def data(digits: Any) -> tuple[np.ndarray, np.ndarray]:
    return digits[1].x[:N], digits[1].y[:N]


# Slow tier: the full rand suite (2 x 100 APGD steps x 20 draws).
@pytest.mark.slow
def test_rand_suite_on_a_randomised_model(noisy: Any, data: Any) -> None:
    x, y = data
    kw: dict[str, Any] = dict(eps=EPS, key=jax.random.key(0), progress=False, store_adversarial=True)
    res = jaxadv.evaluate(noisy, x, y, suite="rand", randomized=True, **kw)
    assert res.attacks == ["apgd-ce-eot20", "apgd-dlr-eot20"]
    # Inside the ball and the box, and the same figure from the same key.
    assert float(np.max(np.abs(res.x_adv - x))) <= EPS + 1e-6
    again = jaxadv.evaluate(noisy, x, y, suite="rand", randomized=True, **kw)
    np.testing.assert_array_equal(res.fooled_by, again.fooled_by)
    # The attacks get through the noise: a fifth of the examples at least fall.
    assert res.robust_accuracy <= res.clean_accuracy - 0.2
    # An attacked example stays adversarial for most other draws of the model (0.76 seen).
    fooled = res.fooled_by >= 0
    assert fooled.any()
    draws = [
        np.asarray(jnp.argmax(noisy(jnp.asarray(res.x_adv[fooled]), jax.random.key(100 + i)), -1))
        for i in range(5)
    ]
    assert float(np.mean([d != y[fooled] for d in draws])) > 0.6


# Slow tier: a strength comparison at 100 steps.
@pytest.mark.slow
def test_gradient_averaging_beats_a_single_draw(noisy: Any, data: Any) -> None:
    x, y = data

    def one_draw(
        logits_fn: Any,
        x: Any,
        y: Any,
        *,
        key: Any,
        eps: Any,
        norm: Any,
        bounds: Any,
        randomized: bool = False,
    ) -> Any:
        return jaxadv.apgd(
            logits_fn, x, y, key=key, eps=eps, steps=100, norm=norm, bounds=bounds, randomized=randomized
        )

    kw: dict[str, Any] = dict(eps=0.06, key=jax.random.key(1), progress=False, checks=False, randomized=True)
    single = jaxadv.evaluate(noisy, x, y, suite=[SuiteAttack("apgd-1", one_draw, randomized=True)], **kw)
    eot = jaxadv.evaluate(noisy, x, y, suite=["apgd-ce-eot20"], **kw)
    assert eot.robust_accuracy <= single.robust_accuracy


def test_randomized_refuses_members_that_cannot(noisy: Any, data: Any) -> None:
    x, y = data
    kw: dict[str, Any] = dict(eps=EPS, key=jax.random.key(0), progress=False)
    with pytest.raises(ValueError, match="apgd-ce, apgd-t, fab-t, square cannot attack a randomised"):
        jaxadv.evaluate(noisy, x, y, suite="standard", randomized=True, **kw)
    certify = jaxadv.evaluation.smoothing(sigma=0.25, radii=(0.1,), n0=10, n=20)
    with pytest.raises(ValueError, match="certify cannot be combined with randomized"):
        jaxadv.evaluate(noisy, x, y, suite="rand", randomized=True, certify=certify, **kw)


@pytest.mark.slow
def test_rand_suite_accepts_a_deterministic_model(mlp: Any, data: Any) -> None:
    # As in AutoAttack: on a deterministic model the 20 draws are equal, and the
    # suite is APGD-CE then APGD-DLR.
    x, y = data
    kw: dict[str, Any] = dict(eps=EPS, key=jax.random.key(0), progress=False, checks=False)
    res = jaxadv.evaluate(mlp.logits_fn, x, y, suite="rand", **kw)
    assert res.robust_accuracy <= res.clean_accuracy
    assert res.attacks == ["apgd-ce-eot20", "apgd-dlr-eot20"]
