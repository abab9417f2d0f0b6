r"""Randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019).

The smoothed classifier of a base classifier :math:`f` is
:math:`g(x) = \arg\max_c P_{\delta\sim N(0,\sigma^2 I)}(f(x+\delta) = c)`. If the top
class has probability :math:`p_A \ge \underline{p_A} > 1/2`, then :math:`g` is
constant on the L2 ball of radius :math:`\sigma\,\Phi^{-1}(\underline{p_A})` around
:math:`x` (Theorem 1 with :math:`\overline{p_B} = 1 - \underline{p_A}`).

:func:`smooth_certify` is the paper's CERTIFY: guess the top class :math:`c_A` from
``n0`` noisy draws, count it in ``n`` fresh, independent draws, take the one-sided
Clopper-Pearson lower bound :math:`\underline{p_A}` at level ``alpha``, and abstain
when :math:`\underline{p_A} \le 1/2`; with probability at least ``1 - alpha`` a
returned radius is valid. :func:`smooth_predict` is PREDICT: the top two counts
:math:`n_A \ge n_B` of ``n`` draws pass a two-sided binomial test at level ``alpha``
or the answer is to abstain; it returns a class other than :math:`g(x)` with
probability at most ``alpha``.

Noise: draw ``j`` of a phase is ``normal(fold_in(phase_key, j), x.shape)`` (the whole
batch at once), so the draws, and hence the results, do not depend on
``batch_size``, which only bounds memory: draws are evaluated ``batch_size`` at a
time (``batch_size x batch`` model inputs per step) in a ``lax.fori_loop``, counts
accumulated, for any ``n``. A draw whose logits are not all finite votes for no class
(in CERTIFY it still counts among the ``n`` trials, which only lowers
:math:`\underline{p_A}`).

The counting is compiled; the binomial tests run afterwards in float64
(:mod:`jaxadv.certify.binomial`), so these functions are called eagerly (not under
``jit``).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv._core.problem import prepare
from jaxadv.certify.binomial import clopper_pearson_lower, two_sided_binomial_pvalue
from jaxadv.models import ModelStatic, combine_model
from jaxadv.typing import Array, ArrayLike, LogitsFn, PRNGKey
from jaxadv.validation import check_batch_array, check_key, check_steps, value_check

__all__ = ["SmoothedCertificate", "smooth_certify", "smooth_predict"]

ABSTAIN = -1


class SmoothedCertificate(NamedTuple):
    """Result of :func:`smooth_certify`.

    Attributes:
      prediction: ``[batch]`` int32 class of the smoothed classifier, ``-1`` to abstain.
      radius: ``[batch]`` float32 certified L2 radius :math:`\\sigma\\Phi^{-1}(\\underline{p_A})`;
        0 exactly where abstaining.
      p_lower: ``[batch]`` float32 lower confidence bound :math:`\\underline{p_A}` on the
        probability of ``prediction`` (of the guessed class when abstaining).
      correct: ``[batch]`` bool ``prediction == y`` when ``y`` was given, else ``None``.
    """

    prediction: Array
    radius: Array
    p_lower: Array
    correct: Array | None

    def certified(self, y: ArrayLike, radius: float | ArrayLike = 0.0) -> Array:
        """``[batch]`` bool: correct and certified at ``radius`` (``prediction == y`` and
        ``self.radius >= radius``); its mean is Cohen et al.'s certified accuracy."""
        return (self.prediction == jnp.asarray(y)) & (self.radius >= jnp.asarray(radius))


@functools.partial(jax.jit, static_argnames=("model", "batch_size", "num_classes"))
def _noisy_counts(
    model: ModelStatic,
    params: list[Any],
    x: Array,
    key: PRNGKey,
    sigma: Array,
    n: Array,
    *,
    batch_size: int,
    num_classes: int,
) -> Array:
    """``[batch, C]`` int32 counts of the base classifier's predictions on ``n`` noisy copies
    (``n`` is traced: a new ``n`` does not recompile)."""
    logits_fn = combine_model(model, params)
    batch = x.shape[0]
    sig = jnp.reshape(sigma, (1,) + sigma.shape + (1,) * (x.ndim - sigma.ndim))
    chunks = (n + batch_size - 1) // batch_size

    def body(i: Array, counts: Array) -> Array:
        draw = i * batch_size + jnp.arange(batch_size)
        keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(draw)
        noise = jax.vmap(lambda k: jax.random.normal(k, x.shape, x.dtype))(keys)
        noisy = (x[None] + sig * noise).reshape(batch_size * batch, *x.shape[1:])
        z = logits_fn(noisy)
        pred = jnp.argmax(z, axis=-1).reshape(batch_size, batch)
        # A draw with non-finite logits votes for no class (it still counts in n).
        valid = jnp.all(jnp.isfinite(z), axis=-1).reshape(batch_size, batch) & (draw < n)[:, None]
        hits = jax.nn.one_hot(pred, num_classes, dtype=jnp.int32) * valid[..., None]
        return counts + hits.sum(axis=0)

    return jax.lax.fori_loop(0, chunks, body, jnp.zeros((batch, num_classes), jnp.int32))


class _Setup(NamedTuple):
    model: ModelStatic
    params: list[Any]
    x: Array
    labels: Array | None
    sigma: Array
    num_classes: int


def _setup(
    logits_fn: LogitsFn, x: ArrayLike, y: ArrayLike | None, key: Any, sigma: Any, alpha: Any, batch_size: Any
) -> _Setup:
    if key is None:
        raise ValueError("key is required: pass key=jax.random.key(0)")
    check_key(key)
    if not isinstance(alpha, (float, int, np.floating)) or not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must be a float in (0, 1), got {alpha!r}")
    check_steps(batch_size, "batch_size")
    labels_in = np.zeros(np.shape(x)[:1], np.int32) if y is None else y
    problem = prepare(logits_fn, x, labels_in, bounds=(-jnp.inf, jnp.inf))
    sig = jnp.asarray(sigma, jnp.float32)
    ok = ((sig > 0) & jnp.isfinite(sig)).ravel()
    bad = sig.ravel()[jnp.argmin(ok)] if sig.size else 0.0
    value_check(ok, "sigma must be > 0 and finite, got {v}", v=bad)
    sig = check_batch_array(sig, problem.x, "sigma")
    labels = None
    if y is not None:
        labels = problem.labels if problem.labels.ndim == 1 else jnp.argmax(problem.labels, axis=-1)
    return _Setup(problem.model, problem.params, problem.x, labels, sig, problem.num_classes)


def _counts(s: _Setup, key: PRNGKey, n: int, batch_size: int) -> np.ndarray:
    if s.x.shape[0] == 0:
        return np.zeros((0, s.num_classes), np.int64)
    counts = _noisy_counts(
        s.model,
        s.params,
        s.x,
        key,
        s.sigma,
        jnp.asarray(n, jnp.int32),
        batch_size=min(batch_size, n),
        num_classes=s.num_classes,
    )
    return np.asarray(counts).astype(np.int64)


def smooth_predict(
    logits_fn: LogitsFn,
    x: ArrayLike,
    *,
    key: PRNGKey,
    sigma: float | ArrayLike,
    n: int,
    alpha: float,
    batch_size: int = 1000,
) -> Array:
    r"""Prediction of the Gaussian-smoothed classifier, abstaining when unsure (PREDICT).

    Counts the base classifier's classes on ``n`` draws of :math:`x + N(0, \sigma^2 I)`;
    returns the top class :math:`c_A` when the two-sided binomial test of
    :math:`n_A` against :math:`n_A + n_B` (top two counts) at :math:`p = 1/2` has
    p-value :math:`\le \alpha`, else ``-1``. The probability of returning a class
    that is not the smoothed classifier's is at most ``alpha``.

    Args:
      logits_fn: base classifier ``x [batch, ...] -> logits [batch, C]``.
      x: ``[batch, ...]`` inputs (noise is not clipped to any box, as in the paper).
      key: PRNG key.
      sigma: noise standard deviation ``> 0``, scalar or ``[batch]``.
      n: number of noise draws per example (a Python int).
      alpha: significance level in ``(0, 1)``.
      batch_size: noise draws evaluated at once per example (static; memory only).

    Returns:
      ``[batch]`` int32 classes, ``-1`` for abstain.
    """
    n = check_steps(n, "n")
    s = _setup(logits_fn, x, None, key, sigma, alpha, batch_size)
    counts = _counts(s, key, n, batch_size)
    order = np.argsort(-counts, axis=1, kind="stable")
    top = order[:, 0]
    n_a = np.take_along_axis(counts, order[:, :1], axis=1)[:, 0]
    n_b = np.take_along_axis(counts, order[:, 1:2], axis=1)[:, 0]
    pvalue = two_sided_binomial_pvalue(n_a, n_a + n_b)
    return jnp.asarray(np.where(pvalue <= alpha, top, ABSTAIN).astype(np.int32))


def smooth_certify(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey,
    sigma: float | ArrayLike,
    n0: int,
    n: int,
    alpha: float,
    batch_size: int = 1000,
) -> SmoothedCertificate:
    r"""Certified L2 radius of the Gaussian-smoothed classifier (CERTIFY).

    ``key`` is split into independent keys for the selection (``n0`` draws, whose top
    class is the guess :math:`c_A`) and the estimation (``n`` draws, counting
    :math:`c_A`: :math:`k`). Then :math:`\underline{p_A}` is the one-sided
    Clopper-Pearson lower bound of :math:`k` out of ``n`` at level ``alpha``
    (:func:`clopper_pearson_lower`); the prediction is :math:`c_A` with radius
    :math:`\sigma\,\Phi^{-1}(\underline{p_A})` when :math:`\underline{p_A} > 1/2`, else
    abstain (``-1``, radius 0). With probability at least ``1 - alpha`` over the noise,
    a non-abstaining answer is the smoothed classifier's class and it is constant on
    the L2 ball of that radius.

    Args:
      logits_fn: base classifier ``x [batch, ...] -> logits [batch, C]``.
      x: ``[batch, ...]`` inputs.
      y: optional ``[batch]`` labels, only to fill ``correct``.
      key: PRNG key.
      sigma: noise standard deviation ``> 0``, scalar or ``[batch]``.
      n0: selection draws (a Python int), e.g. 100.
      n: estimation draws (a Python int), e.g. 100_000.
      alpha: failure probability in ``(0, 1)``, e.g. 0.001.
      batch_size: noise draws evaluated at once per example (static; memory only).

    Returns:
      :class:`SmoothedCertificate`.

    Raises:
      ValueError: for a missing key, ``sigma <= 0``, ``alpha`` outside ``(0, 1)``,
        ``n``/``n0``/``batch_size`` that are not positive ints, and the input errors of
        :func:`jaxadv.attacks.base.prepare` (labels out of range, non-finite ``x``...).
    """
    n0 = check_steps(n0, "n0")
    n = check_steps(n, "n")
    s = _setup(logits_fn, x, y, key, sigma, alpha, batch_size)
    key_select, key_estimate = jax.random.split(key)
    guess = _counts(s, key_select, n0, batch_size).argmax(axis=1) if s.x.shape[0] else np.zeros(0, int)
    counts = _counts(s, key_estimate, n, batch_size)
    k = np.take_along_axis(counts, guess[:, None], axis=1)[:, 0]
    p_lower = clopper_pearson_lower(k, np.full_like(k, n), alpha=float(alpha))
    ok = p_lower > 0.5
    with jax.enable_x64(True):
        phi_inv = np.asarray(jax.scipy.special.ndtri(jnp.asarray(np.where(ok, p_lower, 0.5), jnp.float64)))
    sig = np.broadcast_to(np.asarray(s.sigma, np.float64), k.shape)
    radius = np.where(ok, sig * phi_inv, 0.0).astype(np.float32)
    ok &= radius > 0  # a radius that rounds to 0 in float32 certifies nothing
    radius = np.where(ok, radius, np.float32(0.0))
    prediction = np.where(ok, guess, ABSTAIN).astype(np.int32)
    correct = None if s.labels is None else jnp.asarray(prediction == np.asarray(s.labels))
    return SmoothedCertificate(
        jnp.asarray(prediction),
        jnp.asarray(radius),
        jnp.asarray(p_lower, jnp.float32),
        correct,
    )
