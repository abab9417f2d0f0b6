"""BPDA: the forward pass of ``fn``, the backward pass of ``approx`` (identity: straight-through)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import small_models as sm

import jaxadv

W = sm.random_weights(0, features=16, classes=4)
X = jax.random.uniform(jax.random.key(0), (6, 4, 4, 1), minval=0.05, maxval=0.95)


def quantise(x: jax.Array) -> jax.Array:
    """Four levels: zero gradient almost everywhere."""
    return jnp.round(x * 3.0) / 3.0


def smooth(x: jax.Array) -> jax.Array:
    return jnp.tanh(2.0 * x)


def test_forward_is_fn_exactly() -> None:
    np.testing.assert_array_equal(np.asarray(jaxadv.bpda(quantise)(X)), np.asarray(quantise(X)))
    np.testing.assert_array_equal(np.asarray(jax.jit(jaxadv.bpda(quantise))(X)), np.asarray(quantise(X)))


def test_straight_through_gradient_is_the_upstream_gradient() -> None:
    v = jax.random.normal(jax.random.key(1), X.shape)
    plain = jax.grad(lambda x: jnp.sum(v * quantise(x)))(X)
    assert not np.any(np.asarray(plain))  # what the defence shows a gradient attack
    g = jax.grad(lambda x: jnp.sum(v * jaxadv.bpda(quantise)(x)))(X)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(v))
    # Inside a model: the gradient at x is the classifier's gradient at the quantised input.
    f = sm.model(W)
    loss = lambda u: jnp.sum(jax.nn.log_softmax(f(u))[:, 0])  # noqa: E731
    through = jax.grad(lambda x: loss(jaxadv.bpda(quantise)(x)))(X)
    np.testing.assert_array_equal(np.asarray(through), np.asarray(jax.grad(loss)(quantise(X))))


def test_gradient_with_an_approximation_is_its_vjp() -> None:
    v = jax.random.normal(jax.random.key(2), X.shape)
    g = jax.jit(jax.grad(lambda x: jnp.sum(v * jaxadv.bpda(quantise, smooth)(x))))(X)
    _, vjp = jax.vjp(smooth, X)
    np.testing.assert_allclose(np.asarray(g), np.asarray(vjp(v)[0]), rtol=1e-6)
    # Per example under vmap, as in a batched attack.
    rows = jax.vmap(jax.grad(lambda x, w: jnp.sum(w * jaxadv.bpda(quantise, smooth)(x))))(X, v)
    np.testing.assert_allclose(np.asarray(rows), np.asarray(vjp(v)[0]), rtol=1e-6)


def test_fgsm_through_bpda_steps_along_the_gradient_at_the_quantised_input() -> None:
    """On ``f(q(x))``, FGSM sees a zero gradient and returns ``x``; through BPDA it steps
    along the sign of the classifier's gradient taken at ``q(x)``."""
    f = sm.model(W)
    y = jaxadv.predict(f, quantise(X))
    defended = lambda x: f(quantise(x))  # noqa: E731
    np.testing.assert_array_equal(np.asarray(jaxadv.fgsm(defended, X, y, eps=0.1)), np.asarray(X))
    broken = jaxadv.fgsm(lambda x: f(jaxadv.bpda(quantise)(x)), X, y, eps=0.1)
    onehot = jax.nn.one_hot(y, 4)
    grad_at_q = jax.grad(lambda u: jnp.sum(jaxadv.cross_entropy(f(u), onehot)))(quantise(X))
    want = jnp.clip(X + 0.1 * jnp.sign(grad_at_q), 0.0, 1.0)
    np.testing.assert_array_equal(np.asarray(broken), np.asarray(want))
    assert not np.array_equal(np.asarray(broken), np.asarray(X))


def test_half_precision_and_empty_batches_keep_dtype_and_shape() -> None:
    half = X.astype(jnp.bfloat16)
    for approx in (None, smooth):
        g = jax.grad(lambda x, a=approx: jnp.sum(jaxadv.bpda(quantise, a)(x).astype(jnp.float32)))(half)
        assert g.dtype == jnp.bfloat16 and g.shape == half.shape
    np.testing.assert_array_equal(
        np.asarray(jax.grad(lambda x: jnp.sum(jaxadv.bpda(quantise)(x)))(half)), 1.0
    )
    empty = X[:0]
    assert jax.grad(lambda x: jnp.sum(jaxadv.bpda(quantise, smooth)(x)))(empty).shape == empty.shape


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(TypeError, match="fn must be callable"):
        jaxadv.bpda(3.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="approx must be callable"):
        jaxadv.bpda(quantise, "identity")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keep the shape"):
        jaxadv.bpda(lambda x: x.reshape(len(x), -1))(X)
    with pytest.raises(ValueError, match="must agree"):
        jax.grad(lambda x: jnp.sum(jaxadv.bpda(quantise, lambda u: u[:, :2])(x)))(X)
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(jaxadv.bpda(quantise), (X,), (X,))
