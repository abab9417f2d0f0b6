r"""Single-step attacks: the fast gradient (sign) method."""

from __future__ import annotations

from typing import Literal, overload

import jax

from jaxadv._core.problem import check_finite_step, prepare
from jaxadv.attacks.iterative import projected_gradient
from jaxadv.compose.loop import run_from
from jaxadv.success import AttackResult
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, LoopMode, LossFn, Norm, PRNGKey
from jaxadv.validation import check_norm

_NO_KEY = jax.random.key(0)  # FGSM draws nothing; the loop's operands still carry a key


@overload
def fgsm(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "ce",
    l1_sparsity: float = 0.05,
    loop: LoopMode = "auto",
    return_info: Literal[False] = False,
) -> Array: ...


@overload
def fgsm(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "ce",
    l1_sparsity: float = 0.05,
    loop: LoopMode = "auto",
    return_info: Literal[True],
) -> AttackResult: ...


@overload
def fgsm(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "ce",
    l1_sparsity: float = 0.05,
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult: ...


def fgsm(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "ce",
    l1_sparsity: float = 0.05,
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult:
    r"""Fast gradient sign method (Goodfellow et al., 2015).

    .. math::
        x' = \mathrm{clip}_{[lo, hi]}\big(x + \epsilon\, \mathrm{sign}(s\, \nabla_x J(x, y))\big)

    with :math:`s = +1` (untargeted: move away from ``y``) or :math:`s = -1`
    (``targeted=True``: descend toward the target ``y``). For ``norm="l2"`` /
    ``"l1"`` the sign is replaced by the unit steepest-ascent direction of that
    norm (the fast gradient method), so :math:`\|x' - x\|_p \le \epsilon`.

    For a linear model this is the exact maximiser of the loss over the L-inf
    ball: the logit margin moves by :math:`\epsilon \|w\|_1`.

    Args:
      logits_fn: model ``x -> logits [batch, C]``.
      x: ``[batch, ...]`` clean inputs inside ``bounds``.
      y: ``[batch]`` labels or ``[batch, C]`` one-hot (targets when
        ``targeted``); ``None``: the model's predictions.
      key: accepted and ignored: the attack draws no random numbers (see
        :doc:`/conventions`).
      eps: step size and radius, raw input units, scalar or ``[batch]`` (traced).
      norm, targeted, bounds, loss, l1_sparsity, loop, return_info: as in :func:`jaxadv.pgd`.

    Examples on which the model's logits (or their gradient) are not finite at
    ``x`` are returned unchanged; an empty batch is returned as it is.
    ``eps=inf`` moves every coordinate with a non-zero direction to a bound
    (refused with unbounded ``bounds``).

    Returns:
      The adversarial batch, shape and dtype of ``x``.
    """
    norm = check_norm(norm)
    p = prepare(logits_fn, x, y, bounds=bounds, targeted=targeted, eps=eps)
    check_finite_step(p.eps, p.lo, p.hi, "eps")
    if p.empty:
        return p.output(p.finalize(p.x), targeted=targeted, return_info=return_info)
    attack = projected_gradient(norm=norm, loss=loss, l1_sparsity=l1_sparsity)
    x_adv = run_from(attack, p, p.x, key=_NO_KEY, step_size=p.eps, steps=1, targeted=targeted, loop=loop)
    return p.output(p.finalize(x_adv), targeted=targeted, return_info=return_info)
