"""Carlini-Wagner L2: the minimal perturbation of a linear model, the digits CNN, jit."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import small_models as sm

import jaxadv


def test_linear_model_distance_to_the_boundary() -> None:
    # Logits (0, w.x + b) with w.x + b < 0: the smallest L2 perturbation that
    # flips the class has norm |w.x + b| / ||w||. CW must find it (up to the
    # tolerance of its search over c), never much less than it.
    rng = np.random.default_rng(0)
    w = rng.normal(size=6).astype(np.float32)
    x = rng.uniform(-0.5, 0.5, size=(4, 6)).astype(np.float32)
    b = np.float32(-1.0 - np.max(x @ w))
    f = sm.binary(w, b)
    y = jnp.zeros(4, jnp.int32)
    out = jaxadv.cw_l2(f, x, y, bounds=(-3.0, 3.0), steps=200, binary_search_steps=10)
    exact = np.abs(x @ w + b) / np.linalg.norm(w)
    found = np.asarray(jaxadv.norm_of(out - x, "l2"))
    assert bool(jnp.all(jaxadv.is_adversarial(f, out, y)))
    assert np.all(found >= exact * (1 - 1e-4))
    np.testing.assert_allclose(found, exact, rtol=0.03)


# Slow tier: a strength comparison on the digits CNN.
@pytest.mark.slow
@pytest.mark.full_optimization
def test_smaller_than_pgd_l2_at_equal_success(cnn: Any, digits: Any) -> None:
    x, y = jnp.asarray(digits[1].x[:64]), jnp.asarray(digits[1].y[:64])
    f = cnn.logits_fn
    cw = jaxadv.with_success(jaxadv.cw_l2)(f, x, y, steps=50, binary_search_steps=6, initial_const=0.1)
    pgd = jaxadv.with_success(jaxadv.pgd)(f, x, y, key=jax.random.key(0), eps=1.0, steps=10, norm="l2")
    assert float(jnp.mean(cw.success)) >= float(jnp.mean(pgd.success)) - 0.02
    both = cw.success & pgd.success
    n_cw = jaxadv.norm_of(cw.x_adv - x, "l2")[both]
    n_pgd = jaxadv.norm_of(pgd.x_adv - x, "l2")[both]
    assert float(jnp.median(n_cw)) < float(jnp.median(n_pgd))
    # Failures are returned unchanged.
    np.testing.assert_array_equal(cw.x_adv[~cw.success], x[~cw.success])


def test_confidence_custom_optimizer_and_jit(mlp: Any, digits: Any) -> None:
    x, y = jnp.asarray(digits[1].x[:16]), jnp.asarray(digits[1].y[:16])
    f = mlp.logits_fn
    sgd = optax.sgd(0.5, momentum=0.9)

    @jax.jit
    def run(fn: Any, kappa: jax.Array) -> jax.Array:
        return jaxadv.cw_l2(
            fn, x, y, confidence=kappa, steps=30, binary_search_steps=3, initial_const=1.0, optimizer=sgd
        )

    out = run(f, jnp.float32(2.0))
    ok = jaxadv.is_adversarial(f, out, y)
    assert float(jnp.mean(ok)) > 0.5
    z = jaxadv.logits(f, out)
    margin = (
        jnp.max(jnp.where(jax.nn.one_hot(y, 10) > 0, -jnp.inf, z), -1)
        - jnp.take_along_axis(z, y[:, None], 1)[:, 0]
    )
    assert bool(jnp.all(margin[ok] >= 2.0 - 1e-3))
    before = run._cache_size()
    run(f, jnp.float32(0.0))
    assert run._cache_size() == before
    targets = (y + 1) % 10
    t = jaxadv.cw_l2(f, x, targets, targeted=True, steps=30, binary_search_steps=3, initial_const=1.0)
    assert float(jnp.mean(jaxadv.is_adversarial(f, t, targets, targeted=True))) > 0.5
