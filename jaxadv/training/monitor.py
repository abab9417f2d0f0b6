r"""A guard against the two silent failures of adversarial training: catastrophic
overfitting, and training that never leaves chance accuracy.

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

The same check measures the clean accuracy of the batch and compares it with
chance, the accuracy of always predicting the batch's most frequent class.
PGD adversarial training at a large radius from the first step (eps = 0.3 on
MNIST) can stay there for good, the loss stuck at :math:`\log C`: when the clean
accuracy has sat within ``chance_margin`` of chance for ``patience``
consecutive checks, the state's ``stalled`` flag turns on and a
:class:`ChanceAccuracyWarning` says so. The fix is to ramp eps up from 0 over
the first epoch, with a schedule (see :mod:`jaxadv.training.steps`).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxadv.attacks.iterative import pgd
from jaxadv.models import predict
from jaxadv.typing import ArrayLike, Bounds, LogitsFn, Norm, PRNGKey

__all__ = [
    "CatastrophicOverfittingWarning",
    "ChanceAccuracyWarning",
    "MonitorState",
    "robust_accuracy",
    "robust_accuracy_monitor",
    "update_monitor",
]


class CatastrophicOverfittingWarning(RuntimeWarning):
    """Issued (once) when PGD accuracy collapses during training."""


class ChanceAccuracyWarning(RuntimeWarning):
    """Issued (once) when the clean accuracy stays at chance: the model is not learning."""


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
      last_clean_accuracy: the latest clean accuracy of the monitored batch
        (``nan`` before any check, or when none was given).
      chance: the accuracy of always predicting the batch's most frequent class
        (``nan`` when unknown).
      checks_at_chance: how many consecutive checks, up to this one, had a clean
        accuracy within ``chance_margin`` of ``chance``.
      stalled: True from the check at which ``checks_at_chance`` reached
        ``patience`` (it stays True).
    """

    best_accuracy: float = -1.0
    best_step: int = -1
    last_accuracy: float = float("nan")
    collapsed: bool = False
    collapsed_at: int = -1
    history: tuple[tuple[int, float], ...] = ()
    last_clean_accuracy: float = float("nan")
    chance: float = float("nan")
    checks_at_chance: int = 0
    stalled: bool = False


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
    chance_margin: float = 0.05,
    patience: int = 2,
) -> MonitorState:
    r"""Measure PGD accuracy on a held-out batch and flag catastrophic overfitting
    and training stuck at chance.

    With :math:`a_t` the PGD accuracy (:func:`robust_accuracy`) at this check
    and :math:`a^\star` the best earlier accuracy, the run has *collapsed* when
    :math:`a_t < a^\star - \text{threshold}`. Wong et al. (2020) stop training
    there and keep the parameters of the best check.

    The clean accuracy :math:`c_t` of the batch is measured too (one more
    forward pass). With :math:`p` the chance level, the share of the batch's
    most frequent label, the run has *stalled* once
    :math:`c_t \le p + \text{chance\_margin}` at ``patience`` consecutive checks
    (the model predicts no better than a constant; see the module docstring).

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
        first detected, and a :class:`ChanceAccuracyWarning` when the run stalls.
      chance_margin: how close to chance a clean accuracy counts as chance.
      patience: consecutive checks at chance before the run counts as stalled
        (2: a first check before any training is at chance by nature).

    Returns:
      The updated :class:`MonitorState`.
    """
    if state is None:
        state = MonitorState()
    acc = robust_accuracy(
        logits_fn, x, y, key=key, eps=eps, step_size=step_size, steps=steps, norm=norm, bounds=bounds
    )
    labels = np.asarray(y)
    clean = float(np.mean(np.asarray(predict(logits_fn, x)) == labels))
    chance = float(np.max(np.unique(labels, return_counts=True)[1]) / labels.size) if labels.size else 1.0
    return update_monitor(
        state, acc, step=step, threshold=threshold, warn=warn, clean_accuracy=clean, chance=chance,
        chance_margin=chance_margin, patience=patience,
    )  # fmt: skip


def update_monitor(
    state: MonitorState,
    accuracy: float,
    *,
    step: int,
    threshold: float = 0.2,
    warn: bool = True,
    clean_accuracy: float | None = None,
    chance: float | None = None,
    chance_margin: float = 0.05,
    patience: int = 2,
) -> MonitorState:
    """Fold one measured accuracy into ``state`` (the bookkeeping of :func:`robust_accuracy_monitor`).

    ``clean_accuracy`` and ``chance`` (both fractions, given together or not at
    all) feed the stall check; without them the state's stall fields are kept.
    Raises ``ValueError`` for a ``threshold`` or ``chance_margin`` that is not a
    fraction in ``[0, 1]`` and a ``patience`` below 1.
    """
    for name, value in (("threshold", threshold), ("chance_margin", chance_margin)):
        if not 0.0 <= value <= 1.0:  # NaN fails the comparison too
            raise ValueError(f"{name} must be a fraction in [0, 1], got {value}")
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise ValueError(f"patience must be an int >= 1, got {patience!r}")
    if (clean_accuracy is None) != (chance is None):
        raise ValueError("pass clean_accuracy and chance together (or neither)")
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
    clean, level = state.last_clean_accuracy, state.chance
    at_chance, stalled = state.checks_at_chance, state.stalled
    if clean_accuracy is not None and chance is not None:
        clean, level = float(clean_accuracy), float(chance)
        at_chance = at_chance + 1 if clean <= level + chance_margin else 0
        if not stalled and at_chance >= patience:
            stalled = True
            if warn:
                warnings.warn(
                    f"clean accuracy {clean:.3f} has sat at chance ({level:.3f}, the most frequent class) "
                    f"for {at_chance} checks up to step {step}: the model is not learning. At a large eps "
                    "adversarial training from the first step can stay there; ramp eps up from 0, e.g. "
                    "eps=optax.linear_schedule(0.0, eps, transition_steps=steps_per_epoch)",
                    ChanceAccuracyWarning,
                    stacklevel=3,
                )
    return MonitorState(
        best_accuracy=best,
        best_step=best_step,
        last_accuracy=accuracy,
        collapsed=collapsed,
        collapsed_at=collapsed_at,
        history=state.history + ((int(step), accuracy),),
        last_clean_accuracy=clean,
        chance=level,
        checks_at_chance=at_chance,
        stalled=stalled,
    )
