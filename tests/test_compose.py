"""The attack algebra: exact checks of its parts, and the built-in attacks as configurations.

On a two-class linear model with the margin loss, the input gradient is the
same constant :math:`w_1 - w_0` at every point: momentum, Nesterov look-ahead,
variance tuning and expectation over a transformation then all step along its
sign, so MI/NI/VMI-FGSM and EOT-PGD must coincide with BIM/PGD exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import small_models as sm

import jaxadv
from jaxadv import compose

EPS = 0.1


@pytest.fixture(scope="module")
def binary():
    """A two-class linear model on 8x8x1 inputs, inputs in the middle of the box."""
    w = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    f = sm.affine(w)
    x = jnp.asarray(np.random.default_rng(1).uniform(0.3, 0.7, size=(5, 8, 8, 1)).astype(np.float32))
    return f, x, jaxadv.predict(f, x)


@pytest.mark.slow
def test_transfer_family_equals_bim_for_a_constant_gradient(binary):
    f, x, y = binary
    kw = dict(eps=EPS, step_size=EPS / 4, steps=4, loss="cw")
    ref = np.asarray(jaxadv.bim(f, x, y, **kw))
    key = jax.random.key(3)
    for out in (
        jaxadv.mifgsm(f, x, y, **kw),
        jaxadv.nifgsm(f, x, y, **kw),
        jaxadv.vmifgsm(f, x, y, key=key, num_neighbors=3, **kw),
        jaxadv.tifgsm(f, x, y, key=key, kernel_size=1, diversity_prob=0.0, **kw),
    ):
        np.testing.assert_array_equal(np.asarray(out), ref)


def test_eot_of_an_input_shift_equals_pgd_for_a_constant_gradient(binary):
    f, x, y = binary
    key = jax.random.key(5)
    shift = lambda k, xi: xi + 0.01 * jax.random.normal(k, xi.shape)  # noqa: E731
    kw = dict(key=key, eps=EPS, steps=3, loss="cw")
    ref = jaxadv.pgd(f, x, y, **kw)
    out = jaxadv.eot_pgd(f, x, y, num_samples=4, transform=shift, **kw)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))


def test_translation_invariance_convolves_per_channel():
    """A unit impulse in one channel comes back as the kernel, centred, in that channel only."""
    kernel = compose.gaussian_kernel(5, 3.0)
    assert kernel.shape == (5, 5) and abs(kernel.sum() - 1.0) < 1e-6
    np.testing.assert_allclose(kernel, kernel.T)
    g = np.zeros((1, 9, 9, 2), np.float32)
    g[0, 4, 4, 1] = 1.0

    def source(model, x, labels, *, key, targeted):
        return compose.Gradient(jnp.zeros(1), None, jnp.asarray(g), jnp.ones(1, bool))

    ti = compose.TranslationInvariant(source, jnp.asarray(kernel), (1, 2))
    out = np.asarray(ti(None, jnp.zeros_like(g), jnp.zeros(1, jnp.int32), key=None, targeted=False).grad)
    np.testing.assert_allclose(out[0, 2:7, 2:7, 1], kernel, atol=1e-7)
    assert np.all(out[0, :, :, 0] == 0) and abs(out.sum() - 1.0) < 1e-6


def test_nesterov_takes_the_gradient_at_the_look_ahead_point():
    """The look-ahead is x + alpha * mu * n * v (v in units of the mean |gradient|)."""
    rule = compose.nesterov(0.5)
    v = jnp.full((2, 4), 0.25)  # unit L1 rows: mean-abs units give n * v = 1
    point = rule.lookahead(v, jnp.zeros((2, 4)), jnp.asarray([0.1, 0.2]))
    np.testing.assert_allclose(np.asarray(point), [[0.05] * 4, [0.1] * 4], rtol=1e-6)


def test_variance_tuning_averages_neighbour_gradients():
    """nu = mean of the neighbours' gradients - g; with grad_at = the point itself, that
    mean is x_t plus the mean of the uniform offsets, which stay inside neighborhood * eps."""
    rule = compose.variance_tuning(1.0, neighborhood=2.0, num_neighbors=64)
    x_t = jnp.zeros((3, 16))
    state = rule.init(x_t)
    ctx = compose.Context(x_t, jax.random.key(0), jnp.asarray(0.1), "linf", 0.05, lambda pt, k: pt)
    _, new = rule.update(jnp.ones((3, 16)), state, ctx)
    offsets = np.asarray(new.variance) + 1.0  # mean neighbour point (grad_at is the identity)
    assert np.all(np.abs(offsets) <= 0.2) and np.abs(offsets).max() > 0
    assert abs(float(offsets.mean())) < 0.02  # uniform offsets average out


@pytest.mark.slow
def test_user_built_attack_runs_under_jit_and_vmap(binary):
    f, x, y = binary
    attack = compose.Attack(
        compose.eot(num_samples=2, transform=lambda k, xi: xi),
        compose.momentum(0.9),
        norm="l2",
        random_start=True,
    )
    key = jax.random.key(1)
    direct = attack(f, x, y, key=key, eps=0.5, steps=3)
    jitted = jax.jit(lambda x: attack(f, x, y, key=key, eps=0.5, steps=3))(x)
    np.testing.assert_allclose(np.asarray(direct), np.asarray(jitted), atol=1e-6)
    one = jax.vmap(lambda xi, yi: attack(f, xi[None], yi[None], key=key, eps=0.5, steps=3)[0])(x, y)
    norms = np.asarray(jaxadv.norm_of(one - x, "l2"))
    assert np.all(norms <= 0.5 + 1e-5) and np.all((np.asarray(one) >= 0) & (np.asarray(one) <= 1))


def test_randomized_model_is_called_with_keys(binary):
    """A model that flips its logits' sign with a random key is called as model(x, key)
    by the EOT source, and the attack stays inside the ball."""
    f, x, y = binary
    seen = []

    def noisy(xi, key):
        seen.append(key)
        return f(xi) * jnp.where(jax.random.bernoulli(key), 1.0, -1.0)

    attack = compose.Attack(compose.eot(num_samples=3), randomized=True)
    out = attack(noisy, x, y, key=jax.random.key(0), eps=EPS, steps=2, loop="host")
    assert out.shape == x.shape and seen
    assert np.all(np.abs(np.asarray(out) - np.asarray(x)) <= EPS + 1e-6)


def test_bad_parts_are_refused():
    with pytest.raises(ValueError, match="num_samples"):
        compose.eot(num_samples=0)
    with pytest.raises(ValueError, match="num_neighbors"):
        compose.variance_tuning(num_neighbors=0)
    with pytest.raises(ValueError, match="early_stop needs keep_best"):
        compose.Attack(early_stop=True)
    with pytest.raises(ValueError, match="loss must be"):
        compose.loss_gradient("hinge")
    with pytest.raises(ValueError, match="key is required"):
        compose.Attack(compose.eot(num_samples=2))(
            lambda x: x.reshape(2, -1)[:, :3], jnp.zeros((2, 3)), eps=0.1
        )


@pytest.mark.parametrize("size", [1, 4, 5, 15])
def test_separable_kernel_equals_the_two_dimensional_convolution(size: int) -> None:
    """A ``[k]`` kernel (two banded products) gives the depthwise 'SAME' convolution with
    ``outer(k, k)``, for odd and even sizes and a kernel wider than the image."""
    g = jax.random.normal(jax.random.key(3), (2, 7, 9, 3))
    k1 = compose.gaussian_kernel_1d(size, 2.0)
    np.testing.assert_allclose(np.outer(k1, k1), compose.gaussian_kernel(size, 2.0), rtol=1e-6, atol=1e-9)
    source = compose.loss_gradient()
    two_d = compose.sources._smooth(g, jnp.asarray(np.outer(k1, k1)), (1, 2))
    separable = compose.sources._smooth(g, jnp.asarray(k1), (1, 2))
    np.testing.assert_allclose(separable, two_d, rtol=1e-5, atol=1e-6)
    # NCHW: the spatial axes are (2, 3) of x, i.e. (1, 2) after the batch axis.
    nchw = jnp.transpose(g, (0, 3, 1, 2))
    out = compose.sources._smooth(nchw, jnp.asarray(k1), (2, 3))
    np.testing.assert_allclose(jnp.transpose(out, (0, 2, 3, 1)), two_d, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="kernel must be"):
        compose.translation_invariant(source, kernel=np.ones((3, 4)))
