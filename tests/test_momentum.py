"""MI-FGSM and input diversity: the update rule, kept successes, jit/vmap."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import small_models as sm

import jaxadv


def test_update_rule_matches_hand_computation() -> None:
    # Logits (0, s) with s = sum(a x + c x^2); y = 0 so the CE gradient is
    # sigmoid(s) * (a + 2 c x). Replay the paper's update in NumPy.
    rng = np.random.default_rng(0)
    a = rng.normal(size=5).astype(np.float32)
    c = rng.normal(size=5).astype(np.float32)
    x = rng.uniform(-1, 1, size=(3, 5)).astype(np.float32)
    f = jaxadv.from_apply(sm.quadratic_apply, (jnp.asarray(a), jnp.asarray(c), jnp.float32(0.0)))
    eps, alpha, mu, steps = 0.4, 0.15, 0.7, 4
    out = jaxadv.mifgsm(
        f, x, jnp.zeros(3, jnp.int32), eps=eps, step_size=alpha, steps=steps, decay=mu, bounds=(-5.0, 5.0)
    )
    xt, g = x.astype(np.float64), np.zeros_like(x, np.float64)
    for _ in range(steps):
        s = np.sum(a * xt + c * xt * xt, axis=-1, keepdims=True)
        grad = (1 / (1 + np.exp(-s))) * (a + 2 * c * xt)
        g = mu * g + grad / np.sum(np.abs(grad), axis=-1, keepdims=True)
        xt = np.clip(xt + alpha * np.sign(g), x - eps, x + eps)
    np.testing.assert_allclose(out, xt, atol=1e-5)


def test_success_is_never_lost_by_a_later_step() -> None:
    # s(x) = -0.4 + 6 x - 10 x^2 peaks at x = 0.3; from x = 0 with steps of 0.5 the
    # iterates bounce 0 -> 0.5 (s = 0.1 > 0: adversarial) -> 0 (s = -0.4) -> ...
    f = jaxadv.from_apply(sm.quadratic_apply, (jnp.float32(6.0), jnp.float32(-10.0), jnp.float32(-0.4)))
    x, y = jnp.zeros((1, 1)), jnp.zeros(1, jnp.int32)
    kw = dict(eps=1.0, step_size=0.5, steps=2, bounds=(-1.0, 1.0))
    assert float(jaxadv.bim(f, x, y, **kw)[0, 0]) == 0.0  # plain iteration loses it
    out = jaxadv.mifgsm(f, x, y, decay=0.0, **kw)
    assert float(out[0, 0]) == 0.5
    assert bool(jaxadv.is_adversarial(f, out, y)[0])


@pytest.mark.slow
def test_zero_decay_is_bim(cnn: Any, digits: Any) -> None:
    x, y = jnp.asarray(digits[1].x[:64]), jnp.asarray(digits[1].y[:64])
    f = cnn.logits_fn
    kw = dict(eps=0.1, step_size=0.05, steps=4)
    bim = jaxadv.bim(f, x, y, **kw)
    mi = jaxadv.mifgsm(f, x, y, decay=0.0, **kw)
    keep = jaxadv.is_adversarial(f, bim, y) | ~jaxadv.is_adversarial(f, mi, y)
    np.testing.assert_allclose(mi[keep], bim[keep], atol=1e-6)
    assert bool(jnp.all(jaxadv.is_adversarial(f, mi, y) >= jaxadv.is_adversarial(f, bim, y)))


def test_early_stop_freezes_successful_examples(cnn: Any, digits: Any) -> None:
    x, y = jnp.asarray(digits[1].x[:64]), jnp.asarray(digits[1].y[:64])
    f = cnn.logits_fn
    full = jaxadv.mifgsm(f, x, y, eps=0.2, steps=8)
    early = jaxadv.with_success(jaxadv.mifgsm)(f, x, y, eps=0.2, steps=8, early_stop=True)
    np.testing.assert_array_equal(early.success, jaxadv.predict(f, full) != y)
    # Frozen examples move less: the perturbation stops growing once they succeed.
    assert float(jnp.mean(jnp.abs(early.x_adv - x))) < float(jnp.mean(jnp.abs(full - x)))


def _bilinear(img: np.ndarray, new: int) -> np.ndarray:
    """``img [n, n, c]`` resized to ``[new, new, c]``: bilinear, centres aligned, no antialiasing."""
    n = img.shape[0]
    c = np.maximum((np.arange(new) + 0.5) * n / new - 0.5, 0.0)
    i0 = np.minimum(np.floor(c).astype(int), n - 1)
    i1, w = np.minimum(i0 + 1, n - 1), c - np.floor(c)
    rows = img[i0] * (1 - w)[:, None, None] + img[i1] * w[:, None, None]
    return rows[:, i0] * (1 - w)[None, :, None] + rows[:, i1] * w[None, :, None]


@pytest.mark.slow
def test_diverse_inputs() -> None:
    key = jax.random.key(0)
    x = jax.random.uniform(jax.random.key(1), (16, 8, 8, 3)) + 1.0  # > 0 so padding is visible
    np.testing.assert_array_equal(jaxadv.compose.diverse_inputs(key, x, prob=0.0), x)
    np.testing.assert_array_equal(jaxadv.compose.diverse_inputs(key, x, prob=1.0, resize_rate=1.0), x)
    out = np.asarray(jaxadv.compose.diverse_inputs(key, x, prob=1.0, resize_rate=0.5))
    xn = np.asarray(x)
    assert out.shape == x.shape
    for b in range(16):
        rows = np.flatnonzero(np.any(out[b] > 0, axis=(1, 2)))
        cols = np.flatnonzero(np.any(out[b] > 0, axis=(0, 2)))
        h, w = len(rows), len(cols)
        assert 4 <= h <= 8 and h == w and rows[-1] - rows[0] == h - 1
        # The window is the input resized bilinearly to h x h (pixel centres aligned).
        window = out[b][rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        np.testing.assert_allclose(window, _bilinear(xn[b], h), rtol=1e-5, atol=1e-6)
    g = jax.grad(lambda z: jnp.sum(jaxadv.compose.diverse_inputs(key, z, prob=0.5) ** 2))(x)
    assert bool(jnp.all(jnp.isfinite(g)))


@pytest.mark.slow
def test_diversity_under_jit_and_vmap(cnn: Any, digits: Any) -> None:
    x, y = jnp.asarray(digits[1].x[:32]), jnp.asarray(digits[1].y[:32])
    f = cnn.logits_fn

    @jax.jit
    def run(fn: Any, eps: jax.Array, key: jax.Array) -> jax.Array:
        return jaxadv.mifgsm(fn, x, y, eps=eps, steps=5, diversity_prob=0.5, key=key)

    a = run(f, jnp.float32(0.15), jax.random.key(0))
    np.testing.assert_array_equal(a, run(f, jnp.float32(0.15), jax.random.key(0)))
    assert float(jnp.max(jnp.abs(a - x))) <= 0.15 + 1e-6
    assert float(jnp.mean(jaxadv.predict(f, a) != y)) > 0.3
    keys = jax.random.split(jax.random.key(1), 2)
    both = jax.vmap(lambda k: run(f, jnp.float32(0.15), k))(keys)
    assert both.shape == (2,) + x.shape
    assert not bool(jnp.all(both[0] == both[1]))
    with pytest.raises(ValueError, match="key"):
        jaxadv.mifgsm(f, x, y, eps=0.1, diversity_prob=0.5)
