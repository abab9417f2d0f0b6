r"""Iterative gradient attacks: the Basic Iterative Method and PGD.

Both repeat a projected steepest-ascent step

.. math::
    x_{t+1} = \Pi_{B_\epsilon(x) \cap [lo, hi]}\big(x_t + \alpha\, d_p(s\,\nabla_x L(f(x_t), y))\big)

with :math:`d_p` the steepest-ascent direction of unit :math:`p`-norm
(:func:`jaxadv.threat_models.steepest_direction`), :math:`s = +1` for untargeted and
:math:`s = -1` for targeted attacks, and :math:`\Pi` the projection onto the
intersection of the eps-ball and the box (:func:`jaxadv.threat_models.project_to_feasible`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal, overload

from jaxadv.compose.loop import Attack
from jaxadv.compose.sources import EOT, LossGradient, finite_step
from jaxadv.compose.updates import Steepest
from jaxadv.losses import get_loss
from jaxadv.success import AttackResult
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, LoopMode, LossFn, Norm, PRNGKey
from jaxadv.validation import check_key, check_norm, check_trace

__all__ = ["bim", "eot_pgd", "finite_step", "pgd", "projected_gradient"]


def projected_gradient(
    *,
    norm: Norm = "linf",
    loss: str | LossFn = "ce",
    random_start: bool = False,
    l1_sparsity: float = 0.05,
) -> Attack:
    """The composed attack behind :func:`fgsm`, :func:`bim` and :func:`pgd`: the exact
    gradient of ``loss``, steepest-ascent steps, projection onto ball and box, the
    last iterate returned."""
    return Attack(
        LossGradient(get_loss(loss)),
        Steepest(),
        norm=check_norm(norm),
        random_start=random_start,
        l1_sparsity=l1_sparsity,
    )


@overload
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
    loss: str | LossFn = "ce",
    l1_sparsity: float = 0.05,
    loop: LoopMode = "auto",
    return_info: Literal[False] = False,
    trace: bool = False,
) -> Array: ...


@overload
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
    loss: str | LossFn = "ce",
    l1_sparsity: float = 0.05,
    loop: LoopMode = "auto",
    return_info: Literal[True],
    trace: bool = False,
) -> AttackResult: ...


@overload
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
    loss: str | LossFn = "ce",
    l1_sparsity: float = 0.05,
    loop: LoopMode = "auto",
    return_info: bool = False,
    trace: bool = False,
) -> Array | AttackResult: ...


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
    loss: str | LossFn = "ce",
    l1_sparsity: float = 0.05,
    loop: LoopMode = "auto",
    return_info: bool = False,
    trace: bool = False,
) -> Array | AttackResult:
    r"""Projected gradient descent (Madry et al., 2018).

    Starts from a uniform random point of the feasible set (``random_start``)
    and repeats, ``steps`` times,

    .. math::
        x_{t+1} = \Pi_{B_\epsilon(x) \cap [lo, hi]}\big(x_t + \alpha\, d_p(s\,\nabla_x L)\big),

    where :math:`d_p` is ``sign`` for ``"linf"``, :math:`g/\|g\|_2` for ``"l2"``
    and a sparse unit-L1 direction for ``"l1"`` (see
    :func:`jaxadv.threat_models.steepest_direction`); :math:`s=-1` when ``targeted``.
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
      loss: per-example loss, a callable or a name (:func:`jaxadv.losses.get_loss`);
        default cross-entropy.
      l1_sparsity: fraction of coordinates an L1 step moves (static).
      loop: ``"auto"``, ``"fori"``, ``"compiled"`` or ``"host"`` (see :mod:`jaxadv.engine`).
      return_info: return an :class:`jaxadv.AttackResult` ``(x_adv, success, None)``
        instead of the array (the same for every attack of the library).
      trace: with ``return_info``, keep the run's per-example trace
        (``AttackResult.trace``, a :class:`jaxadv.compose.TraceFlags`: some iterate
        was adversarial, the loss still rose at the end, the gradient was
        unavailable), read off the steps at no extra model call.

    Returns:
      The adversarial batch, shape and dtype of ``x``: inside the eps-ball (up to
      float rounding of ``x``'s dtype) and inside ``bounds``.
    """
    if random_start and key is None:
        raise ValueError("key is required when random_start=True (pass key=jax.random.key(0))")
    check_trace(trace, return_info)
    attack = projected_gradient(norm=norm, loss=loss, random_start=random_start, l1_sparsity=l1_sparsity)
    if trace:
        attack = dataclasses.replace(attack, trace=True)
    return attack(
        logits_fn, x, y, key=key, eps=eps, step_size=step_size, steps=steps, targeted=targeted, bounds=bounds,
        loop=loop, return_info=return_info,
    )  # fmt: skip


@overload
def bim(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    step_size: ArrayLike | None = None,
    steps: int = 10,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "ce",
    l1_sparsity: float = 0.05,
    loop: LoopMode = "auto",
    return_info: Literal[False] = False,
) -> Array: ...


@overload
def bim(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    step_size: ArrayLike | None = None,
    steps: int = 10,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "ce",
    l1_sparsity: float = 0.05,
    loop: LoopMode = "auto",
    return_info: Literal[True],
) -> AttackResult: ...


@overload
def bim(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    step_size: ArrayLike | None = None,
    steps: int = 10,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "ce",
    l1_sparsity: float = 0.05,
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult: ...


def bim(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    step_size: ArrayLike | None = None,
    steps: int = 10,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "ce",
    l1_sparsity: float = 0.05,
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult:
    r"""Basic Iterative Method (Kurakin et al., 2017): PGD started at ``x``.

    .. math::
        x_0 = x,\qquad
        x_{t+1} = \mathrm{clip}_{[lo,hi]}\big(
            \mathrm{clip}_{x\pm\epsilon}(x_t + \alpha\,\mathrm{sign}(s\,\nabla_x L))\big)

    for the default ``norm="linf"``. With ``targeted=True`` and
    ``y = jaxadv.least_likely(logits_fn, x)`` this is the iterative
    least-likely-class method. Arguments as in :func:`pgd`; ``key`` is accepted
    and ignored (the attack is deterministic). Under ``jit`` the loop is one
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
        return_info=return_info,
    )


@overload
def eot_pgd(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    step_size: ArrayLike | None = None,
    steps: int = 10,
    num_samples: int = 10,
    transform: Callable[[PRNGKey, Array], Array] | None = None,
    randomized: bool = False,
    norm: Norm = "linf",
    random_start: bool = True,
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "ce",
    l1_sparsity: float = 0.05,
    loop: LoopMode = "auto",
    return_info: Literal[False] = False,
) -> Array: ...


@overload
def eot_pgd(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    step_size: ArrayLike | None = None,
    steps: int = 10,
    num_samples: int = 10,
    transform: Callable[[PRNGKey, Array], Array] | None = None,
    randomized: bool = False,
    norm: Norm = "linf",
    random_start: bool = True,
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "ce",
    l1_sparsity: float = 0.05,
    loop: LoopMode = "auto",
    return_info: Literal[True],
) -> AttackResult: ...


@overload
def eot_pgd(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    step_size: ArrayLike | None = None,
    steps: int = 10,
    num_samples: int = 10,
    transform: Callable[[PRNGKey, Array], Array] | None = None,
    randomized: bool = False,
    norm: Norm = "linf",
    random_start: bool = True,
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "ce",
    l1_sparsity: float = 0.05,
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult: ...


def eot_pgd(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    step_size: ArrayLike | None = None,
    steps: int = 10,
    num_samples: int = 10,
    transform: Callable[[PRNGKey, Array], Array] | None = None,
    randomized: bool = False,
    norm: Norm = "linf",
    random_start: bool = True,
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "ce",
    l1_sparsity: float = 0.05,
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult:
    r"""PGD with expectation over transformation (EOT; Athalye et al., 2018).

    Each step follows the mean gradient over ``num_samples`` random draws,

    .. math::
        x_{t+1} = \Pi_{B_\epsilon(x) \cap [lo, hi]}\Big(x_t + \alpha\, d_p\Big(
            \frac{s}{n}\sum_{j=1}^{n} \nabla_x L\big(f_{k_j}(T_{k_j}(x_t)), y\big)\Big)\Big),

    which is how a model with randomness is attacked honestly: a randomised
    model ``logits_fn(x, key)`` (``randomized=True``; dropout left on, a
    randomised defence, a smoothed classifier's noise) and/or a random input
    transformation ``transform(key, x) -> x`` applied before the model. Each
    draw gets its own key, folded from ``key`` and the step. Without
    randomness (``num_samples=1``, no transform, deterministic model) this is
    :func:`pgd`.

    A deterministic model's gradient-masking check in :func:`jaxadv.evaluate`
    points here when results vary between runs.

    Args:
      logits_fn: ``x -> logits [batch, C]``, or ``(x, key) -> logits`` with
        ``randomized=True``.
      x, y, eps, steps, norm, random_start, targeted, bounds, loss: as in :func:`pgd`.
      l1_sparsity, loop, return_info: as in :func:`pgd`.
      key: PRNG key (draws and the random start).
      step_size: default ``2.5 * eps / steps``.
      num_samples: draws per step (static); each step costs ``num_samples``
        forward-backward passes.
      transform: optional random input transformation (static callable).
      randomized: the model takes a key (see above).

    Returns:
      The adversarial batch, shape and dtype of ``x`` (the last iterate).
    """
    if key is None:
        raise ValueError("key is required (pass key=jax.random.key(0))")
    check_key(key, per_example=True)
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    attack = Attack(
        EOT(LossGradient(get_loss(loss)), num_samples, transform),
        Steepest(),
        norm=check_norm(norm),
        random_start=random_start,
        l1_sparsity=l1_sparsity,
        randomized=randomized,
    )
    return attack(
        logits_fn, x, y, key=key, eps=eps, step_size=step_size, steps=steps, targeted=targeted, bounds=bounds,
        loop=loop, return_info=return_info,
    )  # fmt: skip
