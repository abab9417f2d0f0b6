r"""Training for certified robustness: losses for randomized smoothing and bound propagation.

Like the adversarial-training losses (:mod:`jaxadv.training.losses`), each loss is
a scalar whose gradient with respect to the parameters held inside ``logits_fn``
is the training gradient of its method, so it drops into any JAX + optax loop:

.. code-block:: python

    def loss(variables, x, y, step):
        f = jaxadv.from_flax(model, variables)
        eps_t, kappa_t = jaxadv.training.ibp_schedule(step, warmup=200, ramp=800, eps=0.1)
        return jaxadv.training.ibp_loss(f, x, y, eps=eps_t, kappa=kappa_t)

    grads = jax.grad(loss)(variables, x, y, step)

* For randomized smoothing (certified by :func:`jaxadv.certify.smooth_certify`):
  :func:`gaussian_augmentation_loss` (Cohen et al., 2019) and
  :func:`smoothadv_loss` (Salman et al., 2019).
* For bound propagation (certified by :func:`jaxadv.certify.verified`):
  :func:`ibp_loss` (Gowal et al., 2018) with its schedule :func:`ibp_schedule`, and
  :func:`crown_ibp_loss` (Zhang et al., 2020).

The bound-propagation losses differentiate through the bounds themselves:
:func:`jaxadv.certify.ibp_bounds` and CROWN's backward pass are compositions of
the model's own primitives (and ``max``/``where`` on the bounds), so
:func:`jax.grad` and :func:`jax.jit` apply; CROWN runs example by example in a
:func:`jax.lax.map`. Their ``logits_fn`` must return logits only (no ``has_aux``)
and treat examples independently (no batch norm in training mode); a Flax NNX
module is bounded through its inference-mode view (:func:`jaxadv.from_nnx`) while
its clean term calls the module itself.

Checks: each loss raises ``ValueError`` naming the argument for static errors
(``steps``, ``m`` or ``batch_size`` below 1, an unknown norm, an empty batch,
labels of the wrong shape or dtype, a missing key) and, on concrete values, for
``eps < 0``, ``sigma <= 0``, ``kappa`` or ``crown_weight`` outside ``[0, 1]``, labels outside
``[0, C)`` and ``x`` outside ``bounds`` (non-finite ``x`` for the Gaussian loss).
Under ``jit`` the value checks are skipped unless the loss is wrapped with
:func:`jaxadv.checked`, which runs them through checkify, as for the other losses.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv.attacks.iterative import pgd
from jaxadv.certify.crown import check_batch_size, crown_lower
from jaxadv.certify.intervals import _ibp, checked_problem
from jaxadv.losses import as_onehot, cross_entropy, log_softmax, mean_cross_entropy
from jaxadv.models import Partial
from jaxadv.training.checks import check_labels
from jaxadv.training.losses import _attack_model, _outer, _result
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, Norm, PRNGKey
from jaxadv.validation import (
    check_batch_array,
    check_in_bounds,
    check_inputs,
    check_key,
    check_steps,
    value_check,
)

__all__ = ["crown_ibp_loss", "gaussian_augmentation_loss", "ibp_loss", "ibp_schedule", "smoothadv_loss"]


# --- checks -------------------------------------------------------------------


def _check_key(key: Any) -> None:
    if key is None:
        raise ValueError("key is required: pass key=jax.random.key(0)")
    check_key(key)


def _check_nonempty(x: Array) -> None:
    if x.shape[0] == 0:
        raise ValueError("x must hold at least one example: the loss is a mean over the batch")


def _check_positive(value: ArrayLike, name: str) -> Array:
    v = jnp.asarray(value, jnp.float32)
    ok = ((v > 0) & jnp.isfinite(v)).ravel()
    value_check(
        jnp.all(ok),
        f"{name} must be > 0 and finite, got {{v}}",
        v=v.ravel()[jnp.argmin(ok)] if v.size else 0.0,
    )
    return v


def _check_unit(value: ArrayLike, name: str) -> Array:
    """A float32 scalar in ``[0, 1]``."""
    v = jnp.asarray(value, jnp.float32)
    if v.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {v.shape}")
    value_check((v >= 0) & (v <= 1), f"{name} must lie in [0, 1], got {{v}}", v=v)
    return v


def _check_count(value: Any, name: str) -> int:
    """A static Python int ``>= 0``."""
    if isinstance(value, jax.core.Tracer) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a Python int >= 0 (it is static), got {value!r}")
    return int(value)


# --- shared pieces --------------------------------------------------------------


def _class_labels(labels: Array) -> Array:
    """``[batch]`` int labels (one-hot or soft labels: their argmax)."""
    return labels if labels.ndim == 1 else jnp.argmax(labels, axis=-1)


def _noise(key: PRNGKey, m: int, x: Array, sigma: Array) -> Array:
    """``[m, batch, ...]`` float32 draws of :math:`N(0, \\sigma^2 I)` (``sigma`` scalar or ``[batch]``)."""
    sig = jnp.reshape(sigma, (1,) + sigma.shape + (1,) * (x.ndim - sigma.ndim))
    return sig * jax.random.normal(key, (m, *x.shape), jnp.float32)


def _noisy_copies(x: Array, noise: Array) -> Array:
    """``[m * batch, ...]``: copy ``i`` of example ``b`` at row ``i * batch + b``, in ``x``'s dtype."""
    return (x.astype(jnp.float32)[None] + noise).reshape(-1, *x.shape[1:]).astype(x.dtype)


def _repeat_labels(y: Array, m: int) -> Array:
    return jnp.tile(y, (m,) + (1,) * (y.ndim - 1))


def _smoothed_log_probs(model: LogitsFn, noise: Array, x: Array) -> Array:
    r""":math:`\log \frac1m \sum_i \mathrm{softmax}(f(x + \delta_i))`, ``[batch, C]``: the log of
    the soft smoothed classifier on the fixed draws ``noise [m, batch, ...]``."""
    m = noise.shape[0]
    z = model(_noisy_copies(x, noise)).astype(jnp.float32)
    logp = log_softmax(z).reshape(m, x.shape[0], z.shape[-1])
    return jax.nn.logsumexp(logp, axis=0) - math.log(m)


# --- randomized smoothing ---------------------------------------------------------


def gaussian_augmentation_loss(
    logits_fn: Any,
    x: ArrayLike,
    y: ArrayLike,
    *,
    key: PRNGKey,
    sigma: float | ArrayLike,
    has_aux: bool = False,
) -> Any:
    r"""Cross-entropy under Gaussian noise: training for randomized smoothing (Cohen et al., 2019).

    .. math::
        \mathcal L(\theta) = \frac1B \sum_b \mathrm{CE}\big(f_\theta(x_b + \delta_b), y_b\big),
        \qquad \delta_b \sim N(0, \sigma^2 I)

    One draw per example, ``jax.random.normal(key, (1, *x.shape))[0]`` times ``sigma``,
    not clipped to any box (as in the paper and in :func:`jaxadv.certify.smooth_certify`,
    which certifies the smoothed classifier of a model trained this way at the same
    ``sigma``).

    Args:
      logits_fn: the model being trained, ``x -> logits [batch, C]`` (or ``x -> (logits,
        aux)`` with ``has_aux``): a callable pytree such as :func:`jaxadv.from_flax` on
        the parameters being differentiated, or a Flax NNX module.
      x: ``[batch, ...]`` clean inputs (finite).
      y: ``[batch]`` integer labels (or ``[batch, C]`` one-hot).
      key: PRNG key of the noise (the same key gives the same loss).
      sigma: noise standard deviation ``> 0``, scalar or ``[batch]`` (traced).
      has_aux: ``logits_fn`` returns ``(logits, aux)``; the loss returns ``(loss, aux)``.

    Returns:
      The scalar float32 loss (batch mean), or ``(loss, aux)``.

    Raises:
      ValueError: for a missing key, an empty batch, non-float or non-finite ``x``,
        ``sigma <= 0`` or of a shape other than ``[]``/``[batch]``, and bad labels.
    """
    _check_key(key)
    x = check_inputs(x)
    _check_nonempty(x)
    y = jnp.asarray(y)
    check_in_bounds(x, jnp.float32(-jnp.inf), jnp.float32(jnp.inf))
    sig = check_batch_array(_check_positive(sigma, "sigma"), x, "sigma")
    noisy = _noisy_copies(jax.lax.stop_gradient(x), _noise(key, 1, x, sig))
    logits, aux = _outer(logits_fn, noisy, has_aux)
    check_labels(y, x.shape[0], logits.shape[-1])
    return _result(mean_cross_entropy(logits, y), aux, has_aux)


def smoothadv_loss(
    logits_fn: Any,
    x: ArrayLike,
    y: ArrayLike,
    *,
    key: PRNGKey,
    sigma: float | ArrayLike,
    eps: ArrayLike,
    steps: int,
    m: int = 1,
    step_size: ArrayLike | None = None,
    bounds: Bounds = (0.0, 1.0),
    attack_logits_fn: LogitsFn | None = None,
    has_aux: bool = False,
) -> Any:
    r"""SmoothAdv: adversarial training of the smoothed classifier (Salman et al., NeurIPS 2019).

    With ``m`` fixed draws :math:`\delta_1..\delta_m \sim N(0, \sigma^2 I)` per example,
    the soft smoothed classifier is
    :math:`\hat G(x')_c = \frac1m \sum_i \mathrm{softmax}(f(x' + \delta_i))_c`. The
    attack is L2 PGD on its cross-entropy, from :math:`x` (no random start, as in the
    paper), with :func:`jaxadv.pgd`:

    .. math::
        \hat x = \mathrm{sg}\Big(\mathrm{PGD}^{L_2}_{\epsilon,\alpha,k}\big(x' \mapsto
        -\log \hat G(x')_y\big)\Big) \in B^{2}_\epsilon(x) \cap [lo, hi]

    and the loss is the base classifier's cross-entropy on the same noisy copies of
    the adversarial inputs:

    .. math::
        \mathcal L(\theta) = \frac{1}{mB} \sum_{b,i}
        \mathrm{CE}\big(f_\theta(\hat x_b + \delta_{i,b}), y_b\big)

    The attack sees ``stop_gradient`` parameters (of ``attack_logits_fn`` when
    given) and is not differentiated through. The ``m * B`` noisy inputs go through
    ``logits_fn`` as one batch (copy ``i`` of example ``b`` at row ``i * B + b``). With
    ``eps = 0`` it is :func:`gaussian_augmentation_loss` averaged over ``m`` draws
    (for ``m = 1``, the same draw from the same key).

    Args:
      logits_fn, x, y, key, has_aux: as in :func:`gaussian_augmentation_loss`; ``x``
        inside ``bounds``.
      sigma: noise standard deviation ``> 0``, scalar or ``[batch]`` (traced).
      eps: L2 radius of the attack, scalar or ``[batch]`` (traced).
      steps: PGD steps (static, ``>= 1``).
      m: noise draws per example (static, ``>= 1``); the paper uses 1 to 8.
      step_size: PGD step :math:`\alpha`; default ``2 * eps / steps`` (the paper's).
      bounds: valid input box ``(lo, hi)`` of the adversarial inputs (the noise is not
        clipped).
      attack_logits_fn: the model the attack runs (default ``logits_fn``); pass the
        inference-mode model for batch norm or dropout.

    Returns:
      The scalar float32 loss, or ``(loss, aux)``.

    Raises:
      ValueError: for a missing key, an empty batch, ``steps < 1``, ``m < 1``,
        ``sigma <= 0``, ``eps < 0``, ``step_size < 0``, ``lo > hi``, bad labels and
        ``x`` outside ``bounds``.
    """
    _check_key(key)
    steps = check_steps(steps)
    m = check_steps(m, "m")
    x = check_inputs(x)
    _check_nonempty(x)
    y = jnp.asarray(y)
    sig = check_batch_array(_check_positive(sigma, "sigma"), x, "sigma")
    x_const = jax.lax.stop_gradient(x)
    noise = _noise(key, m, x, sig)
    attack = _attack_model(logits_fn, attack_logits_fn, has_aux)
    smoothed = Partial(_smoothed_log_probs, attack, noise)
    # Cross-entropy of log(G) is -log G_y: G sums to 1, so log_softmax(log G) = log G.
    alpha = 2.0 * jnp.asarray(eps, jnp.float32) / steps if step_size is None else step_size
    x_adv = pgd(
        smoothed,
        x_const,
        y,
        eps=eps,
        step_size=alpha,
        steps=steps,
        norm="l2",
        random_start=False,
        bounds=bounds,
    )
    noisy = _noisy_copies(jax.lax.stop_gradient(x_adv), noise)
    logits, aux = _outer(logits_fn, noisy, has_aux)
    return _result(mean_cross_entropy(logits, _repeat_labels(y, m)), aux, has_aux)


# --- bound propagation ------------------------------------------------------------


def ibp_schedule(
    step: ArrayLike,
    *,
    warmup: int,
    ramp: int,
    eps: ArrayLike,
    kappa_start: ArrayLike = 1.0,
    kappa_end: ArrayLike = 0.5,
) -> tuple[Array, Array]:
    r"""The linear ramps of IBP training (Gowal et al., 2018): ``(eps_t, kappa_t)`` at ``step``.

    .. math::
        r_t = \mathrm{clip}\Big(\frac{t - \mathrm{warmup}}{\mathrm{ramp}}, 0, 1\Big),\qquad
        \epsilon_t = r_t\,\epsilon,\qquad
        \kappa_t = \kappa_{\mathrm{start}} + r_t\,(\kappa_{\mathrm{end}} - \kappa_{\mathrm{start}})

    Clean training (:math:`\epsilon_t = 0`, :math:`\kappa_t = \kappa_{\mathrm{start}}`) for
    ``warmup`` steps, then both move linearly for ``ramp`` steps and stay at
    :math:`(\epsilon, \kappa_{\mathrm{end}})`; ``ramp=0`` jumps at ``warmup``. For CROWN-IBP
    (Zhang et al., 2020: :math:`\kappa` from 1 to 0 and :math:`\beta` from 1 to 0 over
    the ramp) take ``kappa_end=0`` and :math:`\beta_t = 1 - r_t` (``crown_weight = 1 - eps_t / eps``).

    Args:
      step: the update count, an int scalar ``>= 0`` (traced: e.g. ``state.step``).
      warmup: steps of clean training (static, ``>= 0``).
      ramp: steps of the ramp (static, ``>= 0``).
      eps: final radius ``>= 0`` (scalar or ``[batch]``).
      kappa_start, kappa_end: weights of the clean term, in ``[0, 1]``.

    Returns:
      ``(eps_t, kappa_t)``, float32 (``eps_t`` has the shape of ``eps``).

    Raises:
      ValueError: for ``warmup`` or ``ramp`` that are not ints ``>= 0``, and, on
        concrete values, ``step < 0``, ``eps < 0`` or kappas outside ``[0, 1]``.
    """
    warmup = _check_count(warmup, "warmup")
    ramp = _check_count(ramp, "ramp")
    t = jnp.asarray(step)
    value_check(jnp.all(t >= 0), "step must be >= 0, got {v}", v=t)
    e = jnp.asarray(eps, jnp.float32)
    value_check(jnp.all(e >= 0), "eps must be >= 0, got {v}", v=jnp.min(e) if e.size else 0.0)
    k0, k1 = _check_unit(kappa_start, "kappa_start"), _check_unit(kappa_end, "kappa_end")
    t = t.astype(jnp.float32)
    if ramp == 0:
        r = (t >= warmup).astype(jnp.float32)
    else:
        r = jnp.clip((t - warmup) / ramp, 0.0, 1.0)
    return r * e, k0 + r * (k1 - k0)


def _bound_setup(
    logits_fn: Any, x: ArrayLike, y: ArrayLike, eps: ArrayLike, norm: Norm, bounds: Bounds, kappa: ArrayLike
) -> tuple[Any, str, Array, Array, Array]:
    """Checked problem, norm, kappa, clean cross-entropy ``[batch]`` and one-hot labels."""
    problem, norm_name = checked_problem(logits_fn, x, y, eps=eps, norm=norm, bounds=bounds)
    _check_nonempty(problem.x)
    kappa = _check_unit(kappa, "kappa")
    num_classes = problem.num_classes
    clean = logits_fn(jnp.asarray(x)).astype(jnp.float32)
    clean_ce = cross_entropy(clean, as_onehot(problem.labels, num_classes))
    onehot = jax.nn.one_hot(_class_labels(problem.labels), num_classes, dtype=jnp.float32)
    return problem, norm_name, kappa, clean_ce, onehot


def _ibp_logits(problem: Any) -> tuple[Array, Array]:
    return _ibp(problem.model, problem.params, problem.x, problem.lo, problem.hi, problem.eps)


def ibp_loss(
    logits_fn: Any,
    x: ArrayLike,
    y: ArrayLike,
    *,
    eps: ArrayLike,
    kappa: ArrayLike = 0.5,
    norm: Norm = "linf",
    bounds: Bounds = (0.0, 1.0),
) -> Array:
    r"""Interval bound propagation training loss (Gowal et al., 2018).

    With :math:`[\underline z, \overline z]` the interval bounds of the logits over
    :math:`B_\epsilon(x) \cap [lo, hi]` (:func:`jaxadv.certify.ibp_bounds`), the
    worst-case logits are the lower bound of the true class and the upper bounds of
    the others,

    .. math::
        \hat z_j = \begin{cases} \underline z_y & j = y \\ \overline z_j & j \ne y \end{cases},
        \qquad
        \mathcal L(\theta) = \frac1B \sum_b \Big[\kappa\,\mathrm{CE}\big(f_\theta(x_b), y_b\big)
        + (1 - \kappa)\,\mathrm{CE}\big(\hat z_b, y_b\big)\Big].

    :math:`\mathrm{CE}(\hat z, y) = \log(1 + \sum_{j \ne y} e^{\overline z_j - \underline z_y})`
    upper-bounds the cross-entropy of every input of the threat model, and is small
    only where the margins :math:`\underline z_y - \overline z_j` are positive, i.e.
    where :func:`jaxadv.certify.verified` (``method="ibp"``) holds. The gradient flows
    through the bounds. At ``eps = 0`` the bounds are the clean logits, and the loss
    is the clean cross-entropy for any ``kappa``. Schedule ``eps`` and ``kappa`` with
    :func:`ibp_schedule` (both traced: a new value does not recompile).

    Args:
      logits_fn: the model being trained, ``x -> logits [batch, C]`` (see the module
        docstring for what bound propagation supports), or a Flax NNX module.
      x: ``[batch, ...]`` inputs inside ``bounds``.
      y: ``[batch]`` integer labels (or ``[batch, C]`` one-hot; the worst case uses
        their argmax).
      eps: radius, scalar or ``[batch]`` (traced).
      kappa: weight of the clean term, scalar in ``[0, 1]`` (traced).
      norm: ``"linf"``, ``"l2"`` or ``"l1"`` (IBP bounds the L2 and L1 balls by their
        enclosing L-inf box: sound but loose).
      bounds: valid input box ``(lo, hi)``.

    Returns:
      The scalar float32 loss.

    Raises:
      ValueError: see the module docstring; also for a primitive without an interval
        rule (named in the message).
    """
    problem, _, kappa, clean_ce, onehot = _bound_setup(logits_fn, x, y, eps, norm, bounds, kappa)
    lower, upper = _ibp_logits(problem)
    worst = jnp.where(onehot > 0, lower, upper)
    robust_ce = cross_entropy(worst, onehot)
    return kappa * jnp.mean(clean_ce) + (1.0 - kappa) * jnp.mean(robust_ce)


def crown_ibp_loss(
    logits_fn: Any,
    x: ArrayLike,
    y: ArrayLike,
    *,
    eps: ArrayLike,
    kappa: ArrayLike = 0.0,
    crown_weight: ArrayLike = 1.0,
    norm: Norm = "linf",
    bounds: Bounds = (0.0, 1.0),
    batch_size: int = 32,
) -> Array:
    r"""CROWN-IBP training loss (Zhang et al., ICLR 2020).

    Lower bounds :math:`\underline m_j \le z_y(x') - z_j(x')` on the margins over
    :math:`B_\epsilon(x) \cap [lo, hi]` are mixed from two methods,

    .. math::
        \underline m = \beta\, \underline m^{\mathrm{CROWN\text{-}IBP}}
        + (1 - \beta)\, \underline m^{\mathrm{IBP}},\qquad
        \underline m^{\mathrm{IBP}}_j = \underline z_y - \overline z_j,

    where CROWN-IBP is CROWN's backward pass with the specification rows
    :math:`e_y - e_j` folded into the last layer and the pre-activation bounds of every
    ReLU from IBP (``intermediate="ibp"`` of :func:`jaxadv.certify.crown_bounds`: one
    backward pass per example; the library intersects it with the interval bound of
    the specification, which only tightens it). Then

    .. math::
        \mathcal L(\theta) = \frac1B \sum_b \Big[\kappa\,\mathrm{CE}\big(f_\theta(x_b), y_b\big)
        + (1 - \kappa)\,\mathrm{CE}\big(-\underline m_b, y_b\big)\Big],

    with :math:`\underline m_y = 0`, so :math:`\mathrm{CE}(-\underline m, y) =
    \log(1 + \sum_{j \ne y} e^{-\underline m_j})`. The paper ramps :math:`\epsilon` up
    with :math:`\kappa` and :math:`\beta` going from 1 to 0 (see :func:`ibp_schedule`);
    with :math:`\beta` = ``crown_weight`` = 1 throughout the bounds stay CROWN-IBP. A
    concrete ``crown_weight == 0``
    skips the backward pass (pure IBP margins). The gradient flows through both bounds
    (CROWN runs in a :func:`jax.lax.map` over the batch, ``batch_size`` examples at a
    time).

    Args:
      logits_fn, x, y, eps, norm, bounds: as in :func:`ibp_loss`; the model must be
        built from the primitives :func:`jaxadv.certify.crown_bounds` supports.
      kappa: weight of the clean term, scalar in ``[0, 1]`` (traced).
      crown_weight: :math:`\beta`, the weight of the CROWN-IBP margins, scalar in
        ``[0, 1]`` (traced).
      batch_size: examples bounded at once by CROWN (static; memory only).

    Returns:
      The scalar float32 loss.

    Raises:
      ValueError: as :func:`ibp_loss`; also for ``crown_weight`` outside ``[0, 1]``,
        ``batch_size < 1`` and a primitive CROWN cannot relax.
    """
    problem, norm_name, kappa, clean_ce, onehot = _bound_setup(logits_fn, x, y, eps, norm, bounds, kappa)
    beta = _check_unit(crown_weight, "crown_weight")
    batch_size = check_batch_size(batch_size)
    lower, upper = _ibp_logits(problem)
    margins = jnp.sum(lower * onehot, axis=1, keepdims=True) - upper
    skip_crown = not isinstance(beta, jax.core.Tracer) and float(beta) == 0.0
    if not skip_crown:
        eye = jnp.eye(onehot.shape[-1], dtype=jnp.float32)
        coef = onehot[:, None, :] - eye[None]
        crown = crown_lower(problem, coef, norm=norm_name, intermediate="ibp", batch_size=batch_size)
        margins = beta * crown + (1.0 - beta) * margins
    margins = jnp.where(onehot > 0, 0.0, margins)
    robust_ce = cross_entropy(-margins, onehot)
    return kappa * jnp.mean(clean_ce) + (1.0 - kappa) * jnp.mean(robust_ce)
