"""DeepFool: exact steps on linear models, minimal perturbations on the digits CNN."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import small_models as sm

import jaxadv


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_linear_model_one_exact_step(norm: str) -> None:
    # Three affine classes; class 0 wins at x. DeepFool picks the class whose
    # boundary is nearest in the norm and lands just past it in one step.
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 3)).astype(np.float32)
    b = np.array([2.0, 0.0, 0.0], np.float32)
    x = rng.uniform(-0.2, 0.2, size=(4, 6)).astype(np.float32)
    f = sm.affine(w, b)
    out = np.asarray(
        jaxadv.deepfool(
            f, x, jnp.zeros(4, jnp.int32), norm=norm, overshoot=0.0, bounds=(-10.0, 10.0), steps=3
        )
    )
    z = x @ w + b
    wk = w[:, 1:] - w[:, :1]  # [6, 2]
    fk = z[:, 1:] - z[:, :1]  # [4, 2]
    dual = np.sum(np.abs(wk), 0) if norm == "linf" else np.linalg.norm(wk, axis=0)
    k = np.argmin(np.abs(fk) / dual, axis=1)
    for i in range(4):
        wi, fi = wk[:, k[i]], fk[i, k[i]]
        if norm == "l2":
            r = (abs(fi) + 1e-4) / np.sum(wi**2) * wi
        else:
            r = (abs(fi) + 1e-4) / np.sum(np.abs(wi)) * np.sign(wi)
        np.testing.assert_allclose(out[i], x[i] + r, rtol=1e-4, atol=1e-5)
    assert bool(jnp.all(jaxadv.is_adversarial(f, out, jnp.zeros(4, jnp.int32))))


# Slow tier: a strength comparison on the digits CNN.
@pytest.mark.slow
@pytest.mark.full_optimization
def test_smaller_than_pgd_l2_at_equal_success(cnn: Any, digits: Any) -> None:
    x, y = jnp.asarray(digits[1].x[:100]), jnp.asarray(digits[1].y[:100])
    f = cnn.logits_fn
    df = jaxadv.with_success(jaxadv.deepfool)(f, x, y)
    pgd = jaxadv.with_success(jaxadv.pgd)(f, x, y, key=jax.random.key(0), eps=1.0, steps=10, norm="l2")
    assert float(jnp.mean(df.success)) >= 0.97
    assert float(jnp.mean(df.success)) >= float(jnp.mean(pgd.success)) - 0.02
    both = df.success & pgd.success
    n_df = jaxadv.norm_of(df.x_adv - x, "l2")[both]
    n_pgd = jaxadv.norm_of(pgd.x_adv - x, "l2")[both]
    assert float(jnp.median(n_df)) < float(jnp.median(n_pgd))
    assert bool(jnp.all((df.x_adv >= 0) & (df.x_adv <= 1)))


@pytest.mark.slow
@pytest.mark.full_optimization
def test_misclassified_examples_are_left_alone_and_jit(cnn: Any, digits: Any) -> None:
    x, y = jnp.asarray(digits[1].x[:16]), jnp.asarray(digits[1].y[:16])
    f = cnn.logits_fn
    wrong = (y + 1) % 10  # every example already "misclassified" w.r.t. these labels
    np.testing.assert_array_equal(jaxadv.deepfool(f, x, wrong, steps=5), x)

    @jax.jit
    def run(fn: Any, overshoot: jax.Array) -> jax.Array:
        return jaxadv.deepfool(fn, x, y, overshoot=overshoot, steps=20, norm="linf")

    a = run(f, jnp.float32(0.02))
    assert float(jnp.mean(jaxadv.is_adversarial(f, a, y))) >= 0.9
    before = run._cache_size()
    run(f, jnp.float32(0.1))
    assert run._cache_size() == before


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_targeted_two_class_affine_step_is_exact(norm: str) -> None:
    # Two affine classes: reaching target 1 from class 0 is one step onto the
    # boundary z_1 = z_0 against w_0 - w_1, the closed form of the minimal perturbation.
    rng = np.random.default_rng(1)
    w = rng.normal(size=(6, 2)).astype(np.float32)
    b = np.array([1.5, 0.0], np.float32)
    x = rng.uniform(-0.2, 0.2, size=(4, 6)).astype(np.float32)
    f = sm.affine(w, b)
    t = jnp.ones(4, jnp.int32)
    out = np.asarray(
        jaxadv.deepfool(f, x, t, targeted=True, norm=norm, overshoot=0.0, bounds=(-10.0, 10.0), steps=3)
    )
    wk = w[:, 1] - w[:, 0]
    gap = (x @ w + b)[:, 0] - (x @ w + b)[:, 1]
    assert np.all(gap > 0)
    if norm == "l2":
        r = ((gap + 1e-4) / np.sum(wk**2))[:, None] * wk
    else:
        r = ((gap + 1e-4) / np.sum(np.abs(wk)))[:, None] * np.sign(wk)
    np.testing.assert_allclose(out, x + r, rtol=1e-4, atol=1e-5)
    assert bool(jnp.all(jaxadv.predict(f, out) == 1))


@pytest.mark.slow
@pytest.mark.full_optimization
def test_targeted_reaches_targets_on_the_cnn(cnn: Any, digits: Any) -> None:
    x, y = jnp.asarray(digits[1].x[:32]), jnp.asarray(digits[1].y[:32])
    f = cnn.logits_fn
    t = (y + 3) % 10
    res = jaxadv.deepfool(f, x, t, targeted=True, steps=50, return_info=True)
    np.testing.assert_array_equal(res.success, jaxadv.predict(f, res.x_adv) == t)
    assert float(jnp.mean(res.success)) >= 0.9
    # Untargeted DeepFool goes to the nearest boundary: never farther than a chosen target.
    un = jaxadv.with_success(jaxadv.deepfool)(f, x, y, steps=50)
    both = res.success & un.success
    assert float(jnp.median(jaxadv.norm_of(un.x_adv - x, "l2")[both])) <= float(
        jnp.median(jaxadv.norm_of(res.x_adv - x, "l2")[both])
    )
    with pytest.raises(ValueError, match="targeted"):
        jaxadv.deepfool(f, x, None, targeted=True)
