"""Randomized smoothing against ART's ``PyTorchRandomizedSmoothing.certify`` on the same weights.

The digits MLP's weights are copied into an equivalent PyTorch model
(``tests/torch_models.py``); ART and jaxadv certify the same test digits with the
same ``sigma``, ``n0``, ``n`` and ``alpha`` (Cohen et al.'s CERTIFY). They draw
different noise, so the results agree only within sampling error, checked three ways:

* per example, the count ``k`` of the selected class among the ``n`` estimation
  draws (ours recovered exactly from ``p_lower``, ART's recorded where it computes
  its bound) is ``Bin(n, p)`` with the same ``p`` on both sides: Fisher's exact test,
  Bonferroni-corrected over the examples at family level 0.001;
* where both certify, both predict the same class (two different classes would
  both need probability above 1/2);
* certified accuracy at each radius and the abstention rate: both are means of
  independent per-example indicators with the same expectation, so their
  difference has variance ``sum_i 2 q_i (1 - q_i) / N^2``, ``q_i`` the probability
  that example ``i`` is certified (plug-in from the pooled counts); it must stay
  within 4 standard deviations (plus one example).

And exactly: our bound and radius at our ``k`` are SciPy's
``sigma * norm.ppf(beta.ppf(alpha, k, n - k + 1))`` (the one-sided Clopper-Pearson
bound that ART takes from statsmodels). ART's bound needs statsmodels; where it is
absent the recorded call computes that same SciPy formula.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pytest

from jaxadv import certify
from jaxadv import evaluation as ev

pytestmark = [pytest.mark.slow, pytest.mark.crosscheck, pytest.mark.full_optimization]

N, SIGMA, N0, NDRAWS, ALPHA = 100, 0.25, 100, 1000, 0.001
RADII = (0.0, 0.1, 0.25, 0.4)
KEY = jax.random.key(5)


def _clopper_pearson(k: Any, n: int, alpha: float) -> np.ndarray:
    """SciPy's one-sided lower bound: the alpha quantile of Beta(k, n - k + 1), 0 for k = 0."""
    from scipy.stats import beta

    k = np.asarray(k)
    return np.where(k > 0, beta.ppf(alpha, np.maximum(k, 1), n - k + 1), 0.0)


def test_certify_matches_art_within_sampling_error(mlp: Any, digits: Any) -> None:
    pytest.importorskip("art")
    torch = pytest.importorskip("torch")
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing
    from scipy.stats import fisher_exact, norm
    from torch_models import TorchDigitsMLP, max_logit_gap, to_nchw

    torch.set_num_threads(1)
    x, y = digits[1].x[:N], digits[1].y[:N]
    twin = TorchDigitsMLP(mlp.variables).eval()
    assert max_logit_gap(twin, mlp.logits_fn, x) < 1e-4

    # --- ART, recording k where it computes its bound -----------------------------------
    recorded: list[tuple[int, int]] = []

    class Recorded(PyTorchRandomizedSmoothing):  # type: ignore[misc]
        def _lower_confidence_bound(self, n_class_samples: int, n_total_samples: int) -> float:
            recorded.append((int(n_class_samples), int(n_total_samples)))
            try:
                return float(super()._lower_confidence_bound(n_class_samples, n_total_samples))
            except ImportError:  # statsmodels absent: the same formula from SciPy
                return float(_clopper_pearson(n_class_samples, n_total_samples, self.alpha))

    art_model = Recorded(
        model=twin,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(1, 8, 8),
        nb_classes=10,
        device_type="cpu",
        sample_size=N0,
        scale=SIGMA,
        alpha=ALPHA,
    )
    saved = np.random.get_state()
    np.random.seed(0)  # ART draws its noise from NumPy's global generator
    try:
        art_pred, art_radius = art_model.certify(to_nchw(x).numpy(), n=NDRAWS, batch_size=NDRAWS)
    finally:
        np.random.set_state(saved)
    art_k = np.asarray([k for k, _ in recorded])
    assert len(recorded) == N and all(n == NDRAWS for _, n in recorded)

    # --- jaxadv ------------------------------------------------------------------------------
    setting = ev.smoothing(
        sigma=SIGMA, radii=RADII, n0=N0, n=NDRAWS, alpha=ALPHA, batch_size=N, noise_batch_size=N0
    )
    ours = ev.certified_accuracy(mlp.logits_fn, x, y, certify=setting, key=KEY)
    # The same draws through smooth_certify (one chunk, key folded with 0), for p_lower.
    cert = certify.smooth_certify(
        mlp.logits_fn,
        x,
        y,
        key=jax.random.fold_in(KEY, 0),
        sigma=SIGMA,
        n0=N0,
        n=NDRAWS,
        alpha=ALPHA,
        batch_size=N0,
    )
    pred, radius, p_lower = (np.asarray(a) for a in (cert.prediction, cert.radius, cert.p_lower))
    np.testing.assert_array_equal(ours.radius, np.where(pred == y, radius, -1.0))
    table = np.asarray(certify.clopper_pearson_lower(np.arange(NDRAWS + 1), NDRAWS, alpha=ALPHA), np.float32)
    k = np.searchsorted(table, p_lower)  # table is increasing; p_lower is one of its entries
    np.testing.assert_array_equal(table[k], p_lower)

    # --- exact: our bound and radius are SciPy's at our k ------------------------------------
    scipy_lower = _clopper_pearson(k, NDRAWS, ALPHA)
    np.testing.assert_allclose(p_lower, scipy_lower, rtol=1e-5, atol=1e-7)
    certified = pred >= 0
    assert np.all(scipy_lower[certified] > 0.5) and np.all(scipy_lower[~certified] <= 0.5 + 1e-6)
    np.testing.assert_allclose(
        radius[certified], SIGMA * norm.ppf(scipy_lower[certified]), rtol=1e-4, atol=1e-6
    )
    both = certified & (art_pred >= 0)
    assert both.sum() >= N // 2  # the comparison is not vacuous
    assert np.all(pred[both] == art_pred[both])
    same_k = both & (k == art_k)
    np.testing.assert_allclose(radius[same_k], art_radius[same_k], rtol=1e-4, atol=1e-6)

    # --- per example: the counts come from the same binomial ----------------------------------
    # Compared where both certify the same class (an abstention hides ART's selected
    # class); the examples where only one certifies are what the abstention rate measures.
    our_class = np.where(certified, pred, -1)
    comparable = both & (pred == art_pred)
    pvalues = [
        fisher_exact([[k[i], NDRAWS - k[i]], [art_k[i], NDRAWS - art_k[i]]]).pvalue
        for i in np.flatnonzero(comparable)
    ]
    assert min(pvalues) >= 0.001 / N, min(pvalues)

    # --- aggregates: certified accuracy at each radius, abstention rate -------------------------
    from scipy.stats import binom

    pooled = np.clip((k + art_k) / (2 * NDRAWS), 0.0, 1.0)
    correct_class = our_class == y

    def tolerance(threshold_count: np.ndarray) -> float:
        q = binom.sf(threshold_count - 1, NDRAWS, pooled)  # P(Bin(n, p_i) >= threshold)
        return 4 * float(np.sqrt(np.sum(2 * q * (1 - q)))) / N + 1 / N

    art_correct = art_pred == y
    for j, r in enumerate(RADII):
        # The smallest count certifying radius r: p_lower > 1/2 and sigma * ppf(p_lower) >= r.
        need = max(0.5 + 1e-12, float(norm.cdf(r / SIGMA)))
        threshold = np.full(N, int(np.searchsorted(table, np.float32(need))))
        theirs = float(np.mean(art_correct & (art_radius >= r) & (art_pred >= 0)))
        diff = abs(ours.accuracy[j] - theirs)
        assert diff <= tolerance(np.where(correct_class, threshold, NDRAWS + 1)), (
            r,
            ours.accuracy[j],
            theirs,
        )
    first_certifying = np.full(N, int(np.searchsorted(table, np.float32(0.5), side="right")))
    art_abstention = float(np.mean(art_pred < 0))
    assert abs(ours.abstention_rate - art_abstention) <= tolerance(first_certifying)
