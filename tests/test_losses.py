"""Losses (:mod:`jaxadv.losses`) and the shared input gradient (:mod:`jaxadv.gradients`).

* ``cross_entropy`` equals ``logsumexp(z) - z_y`` (NumPy, float64), accepts soft
  labels, is computed in float32 for bfloat16 logits and stays finite for huge
  logits.
* ``cw_margin`` equals ``max_{j != y} z_j - z_y`` and is positive exactly when the
  model does not predict ``y``.
* ``as_onehot`` turns integer labels into one-hot rows and passes float rows on.
* ``loss_and_grad`` returns the per-example loss, the float32 logits and the
  gradient of ``+sum`` (untargeted) or ``-sum`` (targeted) of the loss: each
  example's gradient is that of the example alone (summed, not averaged), and
  matches the closed form ``W (softmax(z) - onehot)`` of a linear model.
* A custom loss (any hashable callable with the same signature) drives the attacks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import small_models as sm

import jaxadv


def _logits(seed: int, shape: tuple[int, int] = (6, 5), scale: float = 3.0) -> jax.Array:
    return scale * jax.random.normal(jax.random.key(seed), shape)


def _np_ce(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    m = z.max(axis=1, keepdims=True)
    return np.log(np.exp(z - m).sum(axis=1)) + m[:, 0] - z[np.arange(len(y)), y]


def test_as_onehot() -> None:
    y = jnp.asarray([0, 2, 1])
    oh = jaxadv.losses.as_onehot(y, 4)
    assert oh.dtype == jnp.float32 and oh.shape == (3, 4)
    np.testing.assert_array_equal(np.asarray(oh), np.eye(4)[[0, 2, 1]])
    soft = jnp.asarray([[0.2, 0.8], [1.0, 0.0]], jnp.bfloat16)
    out = jaxadv.losses.as_onehot(soft, 2)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), np.asarray(soft, np.float32))


def test_cross_entropy_matches_numpy() -> None:
    z = _logits(0)
    y = jnp.asarray([0, 1, 2, 3, 4, 0])
    got = np.asarray(jaxadv.cross_entropy(z, jax.nn.one_hot(y, 5)))
    np.testing.assert_allclose(got, _np_ce(np.asarray(z), np.asarray(y)), rtol=1e-5)
    # Soft labels: the expectation of the per-class losses.
    w = jnp.asarray([0.25, 0.75])
    soft = w[0] * jax.nn.one_hot(y, 5) + w[1] * jax.nn.one_hot((y + 1) % 5, 5)
    want = 0.25 * _np_ce(np.asarray(z), np.asarray(y)) + 0.75 * _np_ce(np.asarray(z), np.asarray((y + 1) % 5))
    np.testing.assert_allclose(np.asarray(jaxadv.cross_entropy(z, soft)), want, rtol=1e-5)
    # Huge logits: finite, and bfloat16 logits give a float32 loss.
    big = jnp.asarray([[1e4, -1e4, 0.0]])
    assert np.isfinite(float(jaxadv.cross_entropy(big, jax.nn.one_hot(jnp.asarray([1]), 3))[0]))
    out = jaxadv.cross_entropy(z.astype(jnp.bfloat16), jax.nn.one_hot(y, 5))
    assert out.dtype == jnp.float32


def test_cw_margin() -> None:
    z = _logits(1)
    y = jnp.asarray([0, 1, 2, 3, 4, 0])
    got = np.asarray(jaxadv.cw_margin(z, jax.nn.one_hot(y, 5)))
    zn = np.asarray(z, np.float64)
    for i in range(6):
        others = np.delete(zn[i], int(y[i]))
        np.testing.assert_allclose(got[i], others.max() - zn[i, int(y[i])], rtol=1e-5, atol=1e-6)
    pred = np.argmax(zn, axis=1)
    np.testing.assert_array_equal(got > 0, pred != np.asarray(y))


# Compiled once per (loss, targeted, shapes): eager differentiation compiles op by op.
loss_and_grad = jax.jit(jaxadv.gradients.loss_and_grad, static_argnames=("loss", "targeted"))


@pytest.mark.parametrize("targeted", [False, True])
def test_loss_and_grad_closed_form_and_sign(targeted: bool) -> None:
    k1, k2 = jax.random.split(jax.random.key(2))
    params = {"w": jax.random.normal(k1, (7, 4)), "b": jnp.zeros(4)}
    f = sm.affine(params["w"], params["b"])
    x = jax.random.uniform(k2, (5, 7))
    y = jnp.asarray([0, 1, 2, 3, 0])
    loss, z, g = loss_and_grad(f, x, y, loss=jaxadv.cross_entropy, targeted=targeted)
    assert loss.shape == (5,) and z.shape == (5, 4) and g.shape == x.shape
    assert z.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(z), np.asarray(x @ params["w"]), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(loss), _np_ce(np.asarray(z), np.asarray(y)), rtol=1e-5)
    resid = jax.nn.softmax(z) - jax.nn.one_hot(y, 4)
    want = resid @ params["w"].T * (-1.0 if targeted else 1.0)
    np.testing.assert_allclose(np.asarray(g), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_loss_and_grad_is_per_example() -> None:
    """Summed over the batch: the gradient of a row does not depend on the batch size."""
    params = {"w": jax.random.normal(jax.random.key(3), (7, 4)), "b": jnp.ones(4)}
    f = sm.affine(params["w"], params["b"])
    x = jax.random.uniform(jax.random.key(4), (6, 7))
    y = jnp.asarray([3, 1, 2, 0, 0, 1])
    for loss in (jaxadv.cross_entropy, jaxadv.cw_margin):
        _, _, g = loss_and_grad(f, x, y, loss=loss, targeted=False)
        for i in range(6):
            _, _, gi = loss_and_grad(f, x[i : i + 1], y[i : i + 1], loss=loss, targeted=False)
            np.testing.assert_allclose(np.asarray(g[i : i + 1]), np.asarray(gi), rtol=1e-6, atol=1e-7)


def squared_logit(logits: jax.Array, onehot: jax.Array) -> jax.Array:
    """A custom loss: (z_y)^2 / 2, for which an L2 step follows z_y * w_y."""
    return 0.5 * jnp.sum(onehot * logits, axis=-1) ** 2


@pytest.mark.slow
def test_custom_and_margin_losses_drive_attacks() -> None:
    params = {"w": jax.random.normal(jax.random.key(5), (7, 3)), "b": jnp.zeros(3)}
    f = sm.affine(params["w"], params["b"])
    x = jax.random.uniform(jax.random.key(6), (4, 7))
    y = jnp.asarray([0, 1, 2, 0])
    x_adv = jaxadv.fgsm(f, x, y, eps=0.1, norm="l2", loss=squared_logit, bounds=(-5.0, 5.0))
    zy = np.asarray((x @ params["w"])[jnp.arange(4), y])
    wy = np.asarray(params["w"][:, y].T)
    want = 0.1 * np.sign(zy)[:, None] * wy / np.linalg.norm(wy, axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(x_adv - x), want, atol=1e-6)
    # The margin loss raises the margin (untargeted) and lowers it toward a target (targeted).
    before = jaxadv.cw_margin(jaxadv.logits(f, x), jax.nn.one_hot(y, 3))
    up = jaxadv.bim(f, x, y, eps=0.05, steps=2, loss=jaxadv.cw_margin)
    assert bool(jnp.all(jaxadv.cw_margin(jaxadv.logits(f, up), jax.nn.one_hot(y, 3)) > before))
    down = jaxadv.bim(f, x, y, eps=0.05, steps=2, loss=jaxadv.cw_margin, targeted=True)
    assert bool(jnp.all(jaxadv.cw_margin(jaxadv.logits(f, down), jax.nn.one_hot(y, 3)) < before))
