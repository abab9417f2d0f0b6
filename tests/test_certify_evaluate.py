"""Certified accuracy beside robust accuracy: ``certified_accuracy``, ``evaluate(certify=)``, the plot.

Certified accuracy is a lower bound and attacks give an upper bound, so on the same
examples at the same radius the first must never exceed the second: checked on a
Gaussian-augmented digits MLP against the standard suite at L2 radii, for
randomized smoothing (in aggregate) and for CROWN (example by example).
"""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np
import pytest
import small_models as sm

import jaxadv
from jaxadv import certify
from jaxadv import evaluation as ev

SIGMA = 0.25
RADII = (0.0, 0.25, 0.5)
N = 16
KEY = jax.random.key(3)
#: n0 equal to noise_batch_size: selection and estimation share one compiled program.
SMOOTHING = ev.smoothing(
    sigma=SIGMA, radii=RADII, n0=64, n=500, alpha=0.001, batch_size=16, noise_batch_size=64
)
BOUNDS = ev.bound_propagation(radii=RADII, method="crown", norm="l2", batch_size=16)


@pytest.fixture(scope="module")
def noisy(digits: Any) -> tuple[Any, np.ndarray, np.ndarray]:
    """A digits MLP trained under Gaussian noise of std SIGMA, stored (small_models.py)."""
    test = digits[1]
    return sm.trained_digits("noisy_mlp64").logits_fn, test.x[:N], test.y[:N]


def _evaluate_both(noisy: Any, suite: Any) -> dict[float, ev.EvaluationResult]:
    f, x, y = noisy
    kw: dict[str, Any] = dict(norm="l2", suite=suite, key=KEY, batch_size=8, progress=False, checks=False)
    return {
        0.25: jaxadv.evaluate(f, x, y, eps=0.25, certify=SMOOTHING, **kw),
        0.5: jaxadv.evaluate(f, x, y, eps=0.5, certify=BOUNDS, **kw),
    }


@pytest.fixture(scope="module")
def evaluated(noisy: Any) -> dict[float, ev.EvaluationResult]:
    """The standard suite (L2) at 0.25 with smoothing attached, and at 0.5 with CROWN attached.

    Batches of 8 (two per run): every attack compiles one shape; the certification
    cuts its own chunks of 16 from them.
    """
    return _evaluate_both(noisy, "standard")


def _pgd5(logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Any, bounds: Any) -> Any:
    return jaxadv.pgd(logits_fn, x, y, key=key, eps=eps, step_size=eps / 4, steps=5, norm=norm, bounds=bounds)


@pytest.fixture(scope="module")
def evaluated_cheaply(noisy: Any) -> dict[float, ev.EvaluationResult]:
    """The same evaluations with a 5-step PGD for a suite: what ``evaluate`` stores and
    reports of the certification does not depend on the attacks (the bound against the
    standard suite is the slow test's)."""
    return _evaluate_both(noisy, [ev.SuiteAttack("pgd-5", _pgd5)])


@pytest.mark.slow
def test_certified_accuracy_is_below_robust_accuracy_at_every_radius(evaluated: Any) -> None:
    smoothed, bounds = evaluated[0.25].certified, evaluated[0.5].certified
    assert smoothed.method == "smoothing" and bounds.method == "crown"
    for r, res in evaluated.items():
        j = RADII.index(r)
        # Smoothing certifies the smoothed classifier, the attacks ran on the model itself:
        # an empirical check (it holds by a wide margin for a noise-trained model).
        assert smoothed.accuracy[j] <= res.robust_accuracy, (r, smoothed.accuracy, res.robust_accuracy)
        # Bound propagation certifies the model itself: example by example, a theorem.
        assert not np.any(bounds.certified[:, j] & ~res.robust), r
        assert bounds.accuracy[j] <= res.robust_accuracy
    # Not vacuous.
    assert smoothed.accuracy_at(0.25) >= 0.5 and smoothed.accuracy_at(0.5) > 0
    assert bounds.accuracy_at(0.5) > 0


def test_evaluate_stores_what_certified_accuracy_returns(noisy: Any, evaluated_cheaply: Any) -> None:
    f, x, y = noisy
    for r, c in ((0.25, SMOOTHING), (0.5, BOUNDS)):
        stored = evaluated_cheaply[r].certified
        direct = ev.certified_accuracy(f, x, y, certify=c, key=KEY)
        np.testing.assert_array_equal(stored.radius, direct.radius)
        np.testing.assert_array_equal(stored.abstained, direct.abstained)
        np.testing.assert_array_equal(stored.accuracy, direct.accuracy)
        assert stored.certification == c
    # The smoothing figures are smooth_certify's (one chunk of 16, key folded with its index 0).
    smoothed = evaluated_cheaply[0.25].certified
    cert = certify.smooth_certify(
        f, x, y, key=jax.random.fold_in(KEY, 0), sigma=SIGMA, n0=64, n=500, alpha=0.001, batch_size=64
    )
    expected = np.where(np.asarray(cert.prediction) == y, np.asarray(cert.radius, np.float64), -1.0)
    np.testing.assert_array_equal(smoothed.radius, expected)
    np.testing.assert_array_equal(smoothed.abstained, np.asarray(cert.prediction) == -1)
    for j, r in enumerate(RADII):
        assert smoothed.accuracy[j] == float(np.mean(np.asarray(cert.certified(y, r))))
    # The bound-propagation figures are verified()'s at each radius.
    ok = np.stack([np.asarray(certify.verified(f, x, y, eps=r, norm="l2")) for r in RADII], axis=1)
    np.testing.assert_array_equal(
        evaluated_cheaply[0.5].certified.certified, np.maximum.accumulate(ok[:, ::-1], axis=1)[:, ::-1]
    )


def test_result_reports_json_and_repr(evaluated_cheaply: Any) -> None:
    res = evaluated_cheaply[0.25]
    text = res.summary()
    assert "certified at r=0.25" in text and "robust, an upper bound" in text
    assert "smoothed classifier" in text and "abstained" in text
    assert "bound propagation (CROWN), l2" in evaluated_cheaply[0.5].summary()
    assert "certified=CertifiedResult(method='smoothing'" in repr(res)
    back = ev.EvaluationResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert back.certified is not None
    np.testing.assert_array_equal(back.certified.radius, res.certified.radius)
    assert back.certified.certification == SMOOTHING
    assert back.summary() == text
    plain = ev.EvaluationResult.from_dict({k: v for k, v in res.to_dict().items() if k != "certified"})
    assert plain.certified is None and "certified" not in plain.summary()


def test_curve_is_non_increasing_and_the_plot_draws_it(evaluated_cheaply: Any) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    smoothed, bounds = evaluated_cheaply[0.25].certified, evaluated_cheaply[0.5].certified
    for cert in (smoothed, bounds):
        assert np.all(np.diff(cert.accuracy) <= 0)
        rows = cert.certified  # [n, R]: certified at a radius means certified at every smaller one
        assert np.all(rows[:, 1:] <= rows[:, :-1])
    curve = [smoothed.accuracy_at(r) for r in np.linspace(0, 1, 41)]
    assert np.all(np.diff(curve) <= 0) and curve[-1] == 0.0  # n=500 caps the radius near 0.55
    robust = {r: e.robust_accuracy for r, e in evaluated_cheaply.items()}
    fig = ev.plot_certified_accuracy({"smoothing": smoothed, "CROWN": bounds}, robust=robust)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "radius (l2)" and len(ax.lines) == 5  # 2 x (steps, markers), attack points
    np.testing.assert_allclose(ax.lines[1].get_ydata(), smoothed.accuracy * 100)
    np.testing.assert_allclose(ax.lines[4].get_ydata(), [robust[0.25] * 100, robust[0.5] * 100])
    plt.close(fig)


# --- bound propagation on a linear model: exact --------------------------------------------


def test_bound_propagation_radius_on_a_linear_model_is_the_exact_one_rounded_down() -> None:
    """Logits Wx + b, a box that never binds: CROWN verifies label y exactly below the L-inf radius
    min_j (z_y - z_j) / ||w_y - w_j||_1, IBP below min_j (z_y - z_j) / (||w_y||_1 + ||w_j||_1); the
    result keeps the largest listed radius under it."""
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(6, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    x = rng.normal(size=(32, 6)).astype(np.float32)
    z = x @ w + b
    y = np.argmax(z, axis=1).astype(np.int32)
    y[:4] = (y[:4] + 1) % 3  # four misclassified examples: never certified
    margin = z[np.arange(32), y][:, None] - z  # [n, C]
    own = np.arange(3)[None] == y[:, None]
    norm1 = np.abs(w).sum(axis=0)  # ||w_j||_1
    # CROWN bounds the margin's weights w_y - w_j together; IBP bounds each logit alone.
    scale = {
        "crown": np.abs(w.T[y][:, None, :] - w.T[None, :, :]).sum(axis=-1),
        "ibp": norm1[y][:, None] + norm1[None, :],
    }
    radii = np.linspace(0, 1, 21)
    bounds = (-1e6, 1e6)
    for method in ("ibp", "crown"):
        with np.errstate(invalid="ignore"):  # 0 / 0 on the label's own column, masked
            exact = np.min(np.where(own, np.inf, margin / scale[method]), axis=1)
        c = ev.bound_propagation(radii=radii, method=method, batch_size=16)
        res = ev.certified_accuracy(lambda v: v @ w + b, x, y, certify=c, bounds=bounds)
        expected = np.array([radii[radii < e].max() if e > 0 else -1.0 for e in exact])
        far = np.min(np.abs(exact[:, None] - radii[None]), axis=1) > 1e-4  # not on a listed radius
        np.testing.assert_array_equal(res.radius[far], expected[far])
        assert np.all(res.radius[:4] == -1.0) and not res.abstained.any()
        np.testing.assert_allclose(res.accuracy, [np.mean(exact > r) for r in radii], atol=1 - far.mean())


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(sigma=0.25, radii=(0.0, -0.1)), "radii must be >= 0"),
        (dict(sigma=0.25, radii=(0.1, float("nan"))), "radii must be finite"),
        (dict(sigma=0.25, radii=()), "radii is empty"),
        (dict(sigma=0.25, radii="0.5"), "radii must be a sequence"),
        (dict(sigma=0.0, radii=(0.5,)), "sigma must be a finite float > 0"),
        (dict(sigma=-1.0, radii=(0.5,)), "sigma must be a finite float > 0"),
        (dict(sigma=float("inf"), radii=(0.5,)), "sigma must be a finite float > 0"),
        (dict(sigma="0.25", radii=(0.5,)), "sigma must be a float"),
        (dict(sigma=0.25, radii=(0.5,), alpha=1.0), "alpha must be a float in"),
        (dict(sigma=0.25, radii=(0.5,), n=0), "n must be >= 1"),
        (dict(sigma=0.25, radii=(0.5,), n0=2.5), "n0 must be a Python int"),
        (dict(sigma=0.25, radii=(0.5,), batch_size=True), "batch_size must be a positive int"),
    ],
)
def test_smoothing_refuses_bad_settings(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ev.smoothing(**kwargs)


def test_bad_bound_propagation_and_calls_are_refused(noisy: Any) -> None:
    f, x, y = noisy
    x, y = x[:4], y[:4]
    with pytest.raises(ValueError, match="radii must be >= 0"):
        ev.bound_propagation(radii=(-0.01,))
    with pytest.raises(ValueError, match="method must be 'ibp' or 'crown'"):
        ev.bound_propagation(radii=(0.1,), method="smoothing")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="norm"):
        ev.bound_propagation(radii=(0.1,), norm="l3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key is required"):
        ev.certified_accuracy(f, x, y, certify=SMOOTHING)
    with pytest.raises(ValueError, match="certify must be made by"):
        ev.certified_accuracy(f, x, y, certify={"sigma": 0.25}, key=KEY)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="integer labels"):
        ev.certified_accuracy(f, x, y.astype(np.float32), certify=SMOOTHING, key=KEY)
    with pytest.raises(ValueError, match="radii must be >= 0"):  # made by hand, not by smoothing()
        ev.certified_accuracy(
            f, x, y, certify=ev.Certification("smoothing", (-1.0,), "l2", sigma=0.5), key=KEY
        )
    with pytest.raises(ValueError, match="sigma must be"):
        ev.certified_accuracy(f, x, y, certify=ev.Certification("smoothing", (1.0,), "l2"), key=KEY)
    with pytest.raises(ValueError, match="must be one-hot rows"):
        ev.certified_accuracy(f, x, y[:, None], certify=SMOOTHING, key=KEY)
    with pytest.raises(ValueError, match="key must be a PRNG key"):
        ev.certified_accuracy(f, x, y, certify=SMOOTHING, key=3)
    with pytest.raises(ValueError, match="same number of examples"):
        ev.certified_accuracy(f, x, y[:3], certify=SMOOTHING, key=KEY)
    with pytest.raises(ValueError, match="radius must be >= 0"):
        ev.CertifiedResult(SMOOTHING, np.zeros(2), np.zeros(2, bool)).accuracy_at(-1.0)
    kw: dict[str, Any] = dict(eps=0.1, norm="l2", key=KEY, progress=False, checks=False)
    with pytest.raises(ValueError, match="certify must be made by"):
        jaxadv.evaluate(f, x, y, certify=0.25, **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="certify cannot be combined with checkpoint"):
        jaxadv.evaluate(f, x, y, certify=SMOOTHING, checkpoint="/nonexistent/run.json", **kw)


def test_empty_data_gives_an_empty_result() -> None:
    res = ev.certified_accuracy(
        lambda v: v, np.zeros((0, 3), np.float32), np.zeros(0, np.int32), certify=SMOOTHING, key=KEY
    )
    assert res.num_examples == 0 and np.all(np.isnan(res.accuracy)) and np.isnan(res.abstention_rate)
    assert json.loads(json.dumps(res.to_dict()))["accuracy"] == [None, None, None]
