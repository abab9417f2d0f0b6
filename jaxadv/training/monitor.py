r"""A guard against catastrophic overfitting of single-step adversarial training.

Fast adversarial training (FGSM with a random start, Wong et al., 2020) can
suddenly lose all robustness to multi-step attacks within a few updates: FGSM
accuracy on the training batches shoots up while PGD accuracy collapses to
near zero. The remedy in the paper is to watch PGD accuracy on a held-out
batch and to stop (and keep the last good parameters) when it collapses.

:func:`robust_accuracy_monitor` does the watching: call it every epoch (or
every ``n`` steps) with the current model; it measures PGD accuracy with
:func:`jaxadv.pgd` and returns an updated :class:`MonitorState` whose
``collapsed`` flag turns on when the accuracy falls more than ``threshold``
below the best seen so far. The state is a small immutable record; keeping the
best parameters is left to the caller (``monitor.best_step`` says which).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import jax.numpy as jnp

from jaxadv.attacks.iterative import pgd
from jaxadv.models import predict
from jaxadv.typing import ArrayLike, Bounds, LogitsFn, Norm, PRNGKey

__all__ = [
    "CatastrophicOverfittingWarning",
    "MonitorState",
    "robust_accuracy",
    "robust_accuracy_monitor",
    "update_monitor",
]


class CatastrophicOverfittingWarning(RuntimeWarning):
    """Issued (once) when PGD accuracy collapses during training."""


class MonitorState(NamedTuple):
    """What :func:`robust_accuracy_monitor` has seen so far.

    Attributes:
      best_accuracy: highest PGD accuracy measured (``-1.0`` before any check).
      best_step: the ``step`` at which it was measured (``-1`` before any check).
      last_accuracy: the latest PGD accuracy (``nan`` before any check).
      collapsed: True from the first check whose accuracy fell more than
        ``threshold`` below ``best_accuracy`` (it stays True).
      collapsed_at: the ``step`` of that check, or ``-1``.
      history: ``((step, accuracy), ...)`` of every check, oldest first.
    """

    best_accuracy: float = -1.0
    best_step: int = -1
    last_accuracy: float = float("nan")
    collapsed: bool = False
    collapsed_at: int = -1
    history: tuple[tuple[int, float], ...] = ()


def robust_accuracy(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike,
    *,
    key: PRNGKey,
    eps: ArrayLike,
    step_size: ArrayLike | None = None,
    steps: int = 10,
    norm: Norm = "linf",
    bounds: Bounds = (0.0, 1.0),
) -> float:
    r"""Accuracy of ``logits_fn`` on PGD adversarial examples of ``(x, y)``.

    :math:`\frac1B \sum_b [\arg\max f(\mathrm{PGD}(x)_b) = y_b]`, with
    :func:`jaxadv.pgd` (random start from ``key``; ``step_size`` default
    ``2.5 * eps / steps``). A Python float (it synchronises with the device).
    """
    x_adv = pgd(logits_fn, x, y, key=key, eps=eps, step_size=step_size, steps=steps, norm=norm, bounds=bounds)
    return float(jnp.mean(predict(logits_fn, x_adv) == jnp.asarray(y)))


def robust_accuracy_monitor(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike,
    state: MonitorState | None = None,
    *,
    step: int,
    key: PRNGKey,
    eps: ArrayLike,
    step_size: ArrayLike | None = None,
    steps: int = 10,
    threshold: float = 0.2,
    norm: Norm = "linf",
    bounds: Bounds = (0.0, 1.0),
    warn: bool = True,
) -> MonitorState:
    r"""Measure PGD accuracy on a held-out batch and flag catastrophic overfitting.

    With :math:`a_t` the PGD accuracy (:func:`robust_accuracy`) at this check
    and :math:`a^\star` the best earlier accuracy, the run has *collapsed* when
    :math:`a_t < a^\star - \text{threshold}`. Wong et al. (2020) stop training
    there and keep the parameters of the best check.

    Args:
      logits_fn: the current model, in inference mode (e.g.
        ``jaxadv.from_flax(model, variables, train=False)`` or an NNX module).
      x, y: a held-out batch ``[B, ...]`` and its ``[B]`` labels.
      state: the previous :class:`MonitorState` (``None`` for the first check).
      step: the training step (or epoch) of this check, recorded in the state.
      key: PRNG key of PGD's random start (use the same key at every check for
        comparable numbers).
      eps, step_size, steps, norm, bounds: the PGD attack.
      threshold: the drop from the best accuracy that counts as a collapse.
      warn: issue a :class:`CatastrophicOverfittingWarning` when the collapse is
        first detected.

    Returns:
      The updated :class:`MonitorState`.
    """
    if state is None:
        state = MonitorState()
    acc = robust_accuracy(
        logits_fn, x, y, key=key, eps=eps, step_size=step_size, steps=steps, norm=norm, bounds=bounds
    )
    return update_monitor(state, acc, step=step, threshold=threshold, warn=warn)


def update_monitor(
    state: MonitorState, accuracy: float, *, step: int, threshold: float = 0.2, warn: bool = True
) -> MonitorState:
    """Fold one measured accuracy into ``state`` (the bookkeeping of :func:`robust_accuracy_monitor`)."""
    accuracy = float(accuracy)
    collapsed, collapsed_at = state.collapsed, state.collapsed_at
    if not collapsed and state.best_accuracy >= 0 and accuracy < state.best_accuracy - threshold:
        collapsed, collapsed_at = True, int(step)
        if warn:
            warnings.warn(
                f"catastrophic overfitting at step {step}: PGD accuracy {accuracy:.3f} fell from its best "
                f"{state.best_accuracy:.3f} (step {state.best_step}); keep the parameters of that step",
                CatastrophicOverfittingWarning,
                stacklevel=3,
            )
    best, best_step = state.best_accuracy, state.best_step
    if accuracy > best:
        best, best_step = accuracy, int(step)
    return MonitorState(
        best_accuracy=best,
        best_step=best_step,
        last_accuracy=accuracy,
        collapsed=collapsed,
        collapsed_at=collapsed_at,
        history=state.history + ((int(step), accuracy),),
    )
