"""Randomized smoothing: the binomial statistics against exact sums, and certificates
against the closed form of a smoothed linear classifier."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import small_models as sm
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxadv
import jaxadv.certify as certify

PHI = NormalDist()


# --- exact binomial references (pure Python) ---------------------------------------------


def log_pmf(i: int, n: int, p: float) -> float:
    return (
        math.lgamma(n + 1)
        - math.lgamma(i + 1)
        - math.lgamma(n - i + 1)
        + i * math.log(p)
        + (n - i) * math.log1p(-p)
    )


def upper_tail(k: int, n: int, p: float) -> float:
    """P(Bin(n, p) >= k), summed term by term."""
    logs = [log_pmf(i, n, p) for i in range(k, n + 1)]
    top = max(logs)
    return math.exp(top) * math.fsum(math.exp(v - top) for v in logs)


@pytest.mark.parametrize(
    "k, n, alpha",
    [
        (1, 10, 0.05),
        (5, 10, 0.01),
        (50, 100, 0.1),
        (990, 1000, 0.001),
        (99_990, 100_000, 0.001),
        (7, 7, 0.01),
    ],
)
def test_clopper_pearson_solves_the_binomial_tail(k: int, n: int, alpha: float) -> None:
    p = float(certify.clopper_pearson_lower(k, n, alpha=alpha))
    assert upper_tail(k, n, p) == pytest.approx(alpha, rel=1e-6)
    assert upper_tail(k, n, p) <= alpha * (1 + 1e-9)  # rounded to the safe side
    if k == n:
        assert p == pytest.approx(alpha ** (1 / n), rel=1e-12)


def test_clopper_pearson_edges_and_shapes() -> None:
    out = certify.clopper_pearson_lower(np.array([[0, 3], [10, 4]]), 10, alpha=0.05)
    assert out.shape == (2, 2) and out[0, 0] == 0.0
    assert np.all(np.diff(certify.clopper_pearson_lower(np.arange(11), 10, alpha=0.05)) > 0)
    with pytest.raises(ValueError, match="k <= n"):
        certify.clopper_pearson_lower(11, 10, alpha=0.05)
    with pytest.raises(ValueError, match="alpha"):
        certify.clopper_pearson_lower(1, 10, alpha=1.5)


@pytest.mark.parametrize("k, n", [(60, 100), (50, 100), (0, 10), (7, 7), (3, 10), (520, 1000)])
def test_two_sided_pvalue_matches_the_exact_sum(k: int, n: int) -> None:
    """The sum of the probabilities of every outcome no more likely than k (p = 1/2)."""
    pk = math.exp(log_pmf(k, n, 0.5))
    exact = math.fsum(
        math.exp(log_pmf(i, n, 0.5)) for i in range(n + 1) if math.exp(log_pmf(i, n, 0.5)) <= pk * (1 + 1e-9)
    )
    assert float(certify.two_sided_binomial_pvalue(k, n)) == pytest.approx(min(1.0, exact), rel=1e-9)


# --- a linear binary classifier: the smoothed classifier in closed form -------------------


W = np.array([0.5, -1.0, 2.0, 0.25, 1.0, -0.5, 0.75, 1.5], np.float32)
SIGMA = 0.5


def points_at(p_a: np.ndarray, sign: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inputs whose smoothed top class (1 for sign > 0) has probability ``p_a``; their true
    certified radius |w.x| / ||w|| = sigma Phi^-1(p_a)."""
    radius = SIGMA * np.array([PHI.inv_cdf(p) for p in p_a])
    x = (sign * radius)[:, None] * (W / np.linalg.norm(W))[None]
    return x.astype(np.float32), radius


def test_certified_radius_is_below_the_true_radius_and_converges() -> None:
    p_a = np.array([0.7, 0.9, 0.99, 0.7, 0.95, 0.8])
    sign = np.array([1, 1, 1, -1, -1, 1])
    x, true_radius = points_at(p_a, sign)
    labels = (sign > 0).astype(np.int32)
    f = sm.binary(W, 0.0)
    alpha = 0.001
    gaps = {}
    for n in (1_000, 100_000):
        cert = certify.smooth_certify(
            f, x, labels, key=jax.random.key(0), sigma=SIGMA, n0=1000, n=n, alpha=alpha, batch_size=1000
        )
        np.testing.assert_array_equal(cert.prediction, labels)
        assert np.all(np.asarray(cert.correct))
        radius = np.asarray(cert.radius, np.float64)
        assert np.all(radius <= true_radius)
        gaps[n] = true_radius - radius
        # Clopper-Pearson is about z_alpha standard errors below p_A (plus sampling noise).
        z = -PHI.inv_cdf(alpha) + 4.0
        floor = SIGMA * np.array([PHI.inv_cdf(p - z * math.sqrt(p * (1 - p) / n)) for p in p_a])
        assert np.all(radius >= floor)
    assert np.all(gaps[100_000] < gaps[1_000])
    assert np.all(gaps[100_000] < 0.05 * true_radius + 0.01)


def test_predict_on_clear_inputs() -> None:
    x, _ = points_at(np.full(6, 0.99), np.array([1, -1, 1, -1, 1, -1]))
    pred = certify.smooth_predict(
        sm.binary(W, 0.0), x, key=jax.random.key(1), sigma=SIGMA, n=1000, alpha=0.001
    )
    np.testing.assert_array_equal(pred, [1, 0, 1, 0, 1, 0])


def test_abstains_when_the_top_class_has_probability_one_half() -> None:
    """On the decision boundary (p_A = 1/2) any class returned is wrong: at most alpha of the time."""
    copies, alpha = 1000, 0.05
    x = np.zeros((copies, 8), np.float32)
    f = sm.binary(W, 0.0)
    slack = 3 * math.sqrt(alpha * (1 - alpha) / copies)
    pred = np.asarray(certify.smooth_predict(f, x, key=jax.random.key(2), sigma=SIGMA, n=100, alpha=alpha))
    assert np.mean(pred != -1) <= alpha + slack
    cert = certify.smooth_certify(f, x, key=jax.random.key(3), sigma=SIGMA, n0=100, n=100, alpha=alpha)
    assert np.mean(np.asarray(cert.prediction) != -1) <= alpha + slack
    assert cert.correct is None


@pytest.mark.parametrize("batch_size", [7, 1000])
def test_every_draw_is_counted_once(batch_size: int) -> None:
    """A constant classifier wins all n draws: p_lower = alpha^(1/n) exactly, whatever the chunking."""
    f = jaxadv.from_apply(sm.constant_apply, jnp.array([0.0, 1.0, 0.0]))
    n, alpha, sigma = 1003, 0.01, 0.3
    cert = certify.smooth_certify(
        f,
        np.zeros((2, 3), np.float32),
        key=jax.random.key(0),
        sigma=sigma,
        n0=n,
        n=n,
        alpha=alpha,
        batch_size=batch_size,
    )
    np.testing.assert_array_equal(cert.prediction, [1, 1])
    p = alpha ** (1 / n)
    np.testing.assert_allclose(cert.p_lower, p, rtol=1e-6)
    np.testing.assert_allclose(cert.radius, sigma * PHI.inv_cdf(p), rtol=1e-5)


def test_results_do_not_depend_on_batch_size() -> None:
    x, _ = points_at(np.array([0.6, 0.8, 0.9, 0.55, 0.7, 0.95]), np.array([1, -1, 1, 1, -1, -1]))
    f = sm.binary(W, 0.0)
    kwargs = dict(key=jax.random.key(4), sigma=SIGMA, alpha=0.01)
    certs = [certify.smooth_certify(f, x, n0=1000, n=1000, batch_size=bs, **kwargs) for bs in (7, 1000)]
    preds = [certify.smooth_predict(f, x, n=1000, batch_size=bs, **kwargs) for bs in (7, 1000)]
    for c in certs[1:]:
        np.testing.assert_array_equal(c.radius, certs[0].radius)
        np.testing.assert_array_equal(c.prediction, certs[0].prediction)
    np.testing.assert_array_equal(preds[0], preds[1])
    other = certify.smooth_certify(f, x, n0=1000, n=1000, **{**kwargs, "key": jax.random.key(5)})
    assert not np.array_equal(other.p_lower, certs[0].p_lower)  # the key matters


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    sigma=st.floats(0.05, 2.0),
    bias=st.floats(-2.0, 2.0),
)
def test_radius_is_zero_exactly_when_abstaining(seed: int, sigma: float, bias: float) -> None:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=8).astype(np.float32)
    x = rng.normal(size=(6, 8)).astype(np.float32) * 0.3
    cert = certify.smooth_certify(
        sm.binary(w, bias), x, key=jax.random.key(seed), sigma=sigma, n0=1000, n=1000, alpha=0.01
    )
    prediction, radius, p_lower = (np.asarray(v) for v in cert[:3])
    assert np.all(radius >= 0)
    assert np.all(np.isin(prediction, [-1, 0, 1]))
    np.testing.assert_array_equal(prediction == -1, radius == 0)
    ok = prediction != -1
    assert np.all(p_lower[ok] > 0.5) and np.all(p_lower[~ok] <= 0.5)
    expected = sigma * np.array([PHI.inv_cdf(float(p)) for p in p_lower[ok]])
    np.testing.assert_allclose(radius[ok], expected, rtol=1e-4)
    certified = np.asarray(cert.certified(np.where(ok, prediction, 0), radius=0.0))
    np.testing.assert_array_equal(certified, ok)


def test_certified_helper_and_per_example_sigma() -> None:
    x, true_radius = points_at(np.full(6, 0.9), np.ones(6))
    cert = certify.smooth_certify(
        sm.binary(W, 0.0),
        x,
        key=jax.random.key(6),
        sigma=np.array([SIGMA, 2 * SIGMA, 1, 1, 1, 1]),
        n0=1000,
        n=1000,
        alpha=0.01,
    )
    y = np.array([1, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(cert.certified(y)[:2], [True, False])
    r = np.asarray(cert.radius)
    assert np.all(r <= true_radius) and r[1] > 0  # sigma differs, the true radius |w.x|/||w|| does not
    np.testing.assert_array_equal(cert.certified(y, radius=r[0] + 1e-3)[:2], [False, False])


def test_non_finite_draws_vote_for_no_class() -> None:
    f = jaxadv.from_apply(sm.sqrt_nan_apply, jnp.float32(1.0))
    x = np.zeros((6, 8), np.float32)  # half of the noisy copies have x_0 < 0
    cert = certify.smooth_certify(f, x, key=jax.random.key(7), sigma=SIGMA, n0=1000, n=1000, alpha=0.01)
    assert np.all(np.asarray(cert.p_lower) < 0.55)
    np.testing.assert_array_equal(cert.prediction, -1)


def test_inputs_are_checked() -> None:
    f = sm.binary(W, 0.0)
    x = np.zeros((2, 8), np.float32)
    good: dict[str, Any] = dict(key=jax.random.key(0), sigma=0.5, n0=10, n=100, alpha=0.01)
    for bad, match in (
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -1.0}, "sigma"),
        ({"alpha": 0.0}, "alpha"),
        ({"n": 0}, "n must"),
        ({"n0": 2.5}, "n0"),
        ({"key": None}, "key"),
        ({"batch_size": 0}, "batch_size"),
    ):
        with pytest.raises(ValueError, match=match):
            certify.smooth_certify(f, x, **{**good, **bad})
    with pytest.raises(ValueError, match="NaN"):
        certify.smooth_certify(f, np.full((2, 8), np.nan, np.float32), **good)
    with pytest.raises(ValueError, match="labels"):
        certify.smooth_certify(f, x, np.array([0, 2]), **good)
    empty = certify.smooth_certify(f, x[:0], **good)
    assert empty.prediction.shape == (0,) and empty.radius.shape == (0,)
    assert certify.smooth_predict(f, x[:0], key=jax.random.key(0), sigma=0.5, n=10, alpha=0.01).shape == (0,)
