r"""Iterative gradient attacks: the Basic Iterative Method and PGD.

Both repeat a projected steepest-ascent step

.. math::
    x_{t+1} = \Pi_{B_\epsilon(x) \cap [lo, hi]}\big(x_t + \alpha\, d_p(s\,\nabla_x L(f(x_t), y))\big)

with :math:`d_p` the steepest-ascent direction of unit :math:`p`-norm
(:func:`jaxadv.steepest_direction`), :math:`s = +1` for untargeted and
:math:`s = -1` for targeted attacks, and :math:`\Pi` the projection onto the
intersection of the eps-ball and the box (:func:`jaxadv.project_to_feasible`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv.attacks.base import Problem, check_step_size, prepare
from jaxadv.engine import iterate
from jaxadv.gradients import loss_and_grad
from jaxadv.losses import cross_entropy, finite_rows
from jaxadv.models import ModelStatic, combine_model
from jaxadv.threat_models import (
    mask_blocked,
    per_example,
    project_to_feasible,
    random_feasible,
    steepest_direction,
    step_along,
)
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, LoopMode, LossFn, Norm, PRNGKey
from jaxadv.validation import check_norm, check_steps, is_traced


def finite_step(z: Array, g: Array) -> Array:
    """``[batch]`` bool: the logits ``z`` and the gradient ``g`` of an example are finite,
    so a step may be taken from it."""
    return finite_rows(z) & jnp.all(jnp.isfinite(g.reshape(g.shape[0], -1)), axis=1)


def _pgd_body(i: Array, x_t: Array, operands: Any, static: Any) -> Array:
    del i
    params, x, labels, lo, hi, eps, alpha = operands
    model, norm, targeted, loss, l1_sparsity = static
    logits_fn = combine_model(model, params)
    _, z, g = loss_and_grad(logits_fn, x_t, labels, loss=loss, targeted=targeted)
    ok = finite_step(z, g)
    g = jnp.where(per_example(ok, g) > 0, g, 0.0)
    if norm == "l1":
        g = mask_blocked(g, x_t, lo, hi)
    step = step_along(alpha, steepest_direction(g, norm, l1_sparsity=l1_sparsity))
    x_new = project_to_feasible(x_t + step, x, eps, norm, lo, hi)
    # Where the model's logits (or their gradient) are not finite, go back to x.
    return jnp.where(per_example(ok, x) > 0, x_new, x)


@functools.partial(jax.jit, static_argnames=("norm", "model"))
def _random_init(
    key: PRNGKey, params: Any, x: Array, eps: Array, lo: Array, hi: Array, *, norm: Norm, model: ModelStatic
) -> Array:
    """A random point of the feasible set; ``x`` itself for the examples whose clean
    logits are not finite (they are returned unchanged)."""
    x0 = random_feasible(key, x, eps, norm, lo, hi)
    clean_ok = finite_rows(combine_model(model, params)(x))
    return jnp.where(per_example(clean_ok, x) > 0, x0, x)


def check_finite_step(step_size: Array, lo: Array, hi: Array, name: str = "step_size") -> None:
    """Refuse (concrete values) an infinite step size with unbounded ``bounds``: the
    step would leave every finite value."""
    if is_traced(step_size, lo, hi):
        return
    if not bool(np.all(np.isfinite(np.asarray(step_size)))) and not (
        bool(np.all(np.isfinite(np.asarray(lo)))) and bool(np.all(np.isfinite(np.asarray(hi))))
    ):
        raise ValueError(
            f"{name} is infinite (eps=inf gives an infinite default step) and bounds are unbounded: "
            "nothing would keep the step finite; pass a finite step_size"
        )


def run_projected_gradient(
    p: Problem,
    x_init: Array,
    *,
    step_size: Array,
    steps: int,
    norm: Norm,
    targeted: bool,
    loss: LossFn,
    l1_sparsity: float,
    loop: LoopMode,
) -> Array:
    """Run ``steps`` projected steepest-ascent steps from ``x_init`` (float32).

    The building block of :func:`fgsm`, :func:`bim` and :func:`pgd`, exposed so
    that other attacks (adversarial training, transfer) reuse the same step.
    Returns float32 iterates; use ``p.finalize`` for the caller's dtype. A step
    from a point where the logits or the gradient are not finite goes back to
    ``x`` instead (so an example on which the model is not finite stays at ``x``).
    """
    norm = check_norm(norm)
    operands = (p.params, p.x, p.labels, p.lo, p.hi, p.eps, step_size)
    static = (p.model, norm, targeted, loss, l1_sparsity)
    return iterate(_pgd_body, x_init, operands, steps=steps, static=static, loop=loop)


def pgd(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    step_size: ArrayLike | None = None,
    steps: int = 10,
    norm: Norm = "linf",
    random_start: bool = True,
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: LossFn = cross_entropy,
    l1_sparsity: float = 0.05,
    loop: LoopMode = "auto",
) -> Array:
    r"""Projected gradient descent (Madry et al., 2018).

    Starts from a uniform random point of the feasible set (``random_start``)
    and repeats, ``steps`` times,

    .. math::
        x_{t+1} = \Pi_{B_\epsilon(x) \cap [lo, hi]}\big(x_t + \alpha\, d_p(s\,\nabla_x L)\big),

    where :math:`d_p` is ``sign`` for ``"linf"``, :math:`g/\|g\|_2` for ``"l2"``
    and a sparse unit-L1 direction for ``"l1"`` (see
    :func:`jaxadv.steepest_direction`); :math:`s=-1` when ``targeted``.
    Each step has :math:`p`-norm ``step_size``; the total perturbation has
    :math:`p`-norm at most ``eps``, and every iterate lies in ``bounds``.

    ``eps`` and ``bounds`` are measured in the raw input space of ``x`` (use the
    ``mean``/``std`` of :func:`jaxadv.from_flax` for normalised models).
    ``eps=inf`` is the unbounded ball: the feasible set is the box, the random
    start is uniform in it, and the default step is infinite (each moved
    coordinate goes to a bound; with unbounded ``bounds`` pass a finite
    ``step_size``).

    Examples on which the model's logits are not finite (NaN or inf) at ``x`` are
    returned unchanged; a step from an iterate where they, or the gradient, are
    not finite goes back to ``x``. An empty batch is returned as it is.

    Args:
      logits_fn: model ``x -> logits [batch, C]``; see :func:`jaxadv.from_flax`.
      x: ``[batch, ...]`` clean inputs inside ``bounds`` (any float dtype;
        gradients are taken in float32).
      y: ``[batch]`` integer labels or ``[batch, C]`` one-hot; for a targeted
        attack, the targets. ``None``: the model's own predictions (avoids label
        leaking).
      key: PRNG key for the random start (required when ``random_start``).
      eps: radius, scalar or ``[batch]`` (traced: new values do not recompile).
      step_size: :math:`\alpha`, scalar or ``[batch]`` (traced); default
        ``2.5 * eps / steps``.
      steps: number of iterations (static).
      norm: ``"linf"``, ``"l2"`` or ``"l1"`` (any case; ``"inf"`` means ``"linf"``).
      random_start: start from a uniform point of the ball instead of ``x``.
      targeted: descend the loss of ``y`` instead of ascending it.
      bounds: ``(lo, hi)``, scalars or arrays broadcasting against ``x``.
      loss: per-example loss (default cross-entropy; :func:`jaxadv.cw_margin`).
      l1_sparsity: fraction of coordinates an L1 step moves (static).
      loop: ``"auto"``, ``"fori"``, ``"compiled"`` or ``"host"`` (see :mod:`jaxadv.engine`).

    Returns:
      The adversarial batch, shape and dtype of ``x``: inside the eps-ball (up to
      float rounding of ``x``'s dtype) and inside ``bounds``.
    """
    norm = check_norm(norm)
    steps = check_steps(steps)
    if random_start and key is None:
        raise ValueError("key is required when random_start=True (pass key=jax.random.key(0))")
    p = prepare(logits_fn, x, y, bounds=bounds, targeted=targeted, eps=eps)
    alpha = check_step_size(2.5 * p.eps / steps if step_size is None else step_size, p.x)
    check_finite_step(alpha, p.lo, p.hi)
    if p.empty:
        return p.finalize(p.x)
    if random_start:
        x_init = _random_init(key, p.params, p.x, p.eps, p.lo, p.hi, norm=norm, model=p.model)
    else:
        x_init = p.x
    x_adv = run_projected_gradient(
        p,
        x_init,
        step_size=alpha,
        steps=steps,
        norm=norm,
        targeted=targeted,
        loss=loss,
        l1_sparsity=l1_sparsity,
        loop=loop,
    )
    return p.finalize(x_adv)


def bim(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    eps: ArrayLike,
    step_size: ArrayLike | None = None,
    steps: int = 10,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: LossFn = cross_entropy,
    l1_sparsity: float = 0.05,
    loop: LoopMode = "auto",
) -> Array:
    r"""Basic Iterative Method (Kurakin et al., 2017): PGD started at ``x``.

    .. math::
        x_0 = x,\qquad
        x_{t+1} = \mathrm{clip}_{[lo,hi]}\big(
            \mathrm{clip}_{x\pm\epsilon}(x_t + \alpha\,\mathrm{sign}(s\,\nabla_x L))\big)

    for the default ``norm="linf"``. With ``targeted=True`` and
    ``y = jaxadv.least_likely(logits_fn, x)`` this is the iterative
    least-likely-class method. Arguments as in :func:`pgd` (no ``key``: the
    attack is deterministic). Under ``jit`` the loop is one
    :func:`jax.lax.fori_loop`.

    Returns:
      The adversarial batch, shape and dtype of ``x``.
    """
    return pgd(
        logits_fn,
        x,
        y,
        eps=eps,
        step_size=step_size,
        steps=steps,
        norm=norm,
        random_start=False,
        targeted=targeted,
        bounds=bounds,
        loss=loss,
        l1_sparsity=l1_sparsity,
        loop=loop,
    )
