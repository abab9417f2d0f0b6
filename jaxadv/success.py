r"""Per-example success masks, computed by re-predicting the returned examples.

Every attack in jaxadv returns the adversarial batch (shape and dtype of
``x``); with ``return_info=True`` it returns an :class:`AttackResult`
``(x_adv, success, queries)`` instead. Success is always answered by running
the model on *exactly* the array the attack returned, so the mask agrees with
re-prediction by construction (at the boundary of the ball, after clipping and
after the cast to ``x``'s dtype):

* :func:`is_adversarial` — ``argmax f(x_adv) != y`` (untargeted) or
  ``argmax f(x_adv) == y`` (targeted), shape ``[batch]``.
* :func:`with_success` — wrap any attack so that it returns
  ``AttackResult(x_adv, success)``.

Inside the iterative attacks the same test is applied to each iterate after it
is rounded to the caller's dtype and clipped (:func:`as_returned`), which is how
the attacks keep the best adversarial iterate found and freeze an example once
it has succeeded.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax.numpy as jnp

from jaxadv.losses import finite_rows
from jaxadv.models import logits
from jaxadv.threat_models import cast_into_box
from jaxadv.typing import Array, ArrayLike, LogitsFn
from jaxadv.validation import check_labels

__all__ = ["AttackResult", "is_adversarial", "with_success"]


class AttackResult(NamedTuple):
    """An attack's output with its per-example success mask: what every attack
    returns with ``return_info=True`` (and :func:`with_success` for any attack).

    Attributes:
      x_adv: ``[batch, ...]`` adversarial batch, shape and dtype of ``x``.
      success: ``[batch]`` bool, ``is_adversarial`` of ``x_adv``.
      queries: ``[batch]`` int32 model evaluations spent per example, for the
        attacks that count them (the black-box ones); ``None`` otherwise.
      trace: the run's :class:`jaxadv.compose.TraceFlags` (per example: some
        iterate was adversarial, the loss was still rising at the end, the
        gradient was unavailable) for an attack asked to trace (``trace=True``);
        ``None`` otherwise.
    """

    x_adv: Array
    success: Array
    queries: Array | None = None
    trace: Any = None


def as_returned(x: Array, dtype: Any, lo: Array, hi: Array) -> Array:
    """Round float32 iterates to the caller's dtype and clip them into the box with
    :meth:`jaxadv.attacks.base.Problem.finalize`'s rule (:func:`jaxadv.threat_models.cast_into_box`),
    then return them as float32.

    An iterate passed through this is exactly the array an attack would return, so
    a success test on its logits agrees with re-predicting the returned example.
    """
    return cast_into_box(x, dtype, lo, hi).astype(jnp.float32)


def hits(logits: Array, labels: ArrayLike, targeted: bool) -> Array:
    """Success of each example given its logits: prediction differs from ``labels``
    (untargeted) or equals it (targeted). ``labels``: ``[batch]`` ints or one-hot.

    An example whose logits are not all finite (NaN or inf) is never a success:
    its prediction is undefined."""
    labels = jnp.asarray(labels)
    if labels.ndim == 2:
        labels = jnp.argmax(labels, axis=-1)
    pred = jnp.argmax(logits, axis=-1)
    return finite_rows(logits) & (pred == labels if targeted else pred != labels)


def is_adversarial(
    logits_fn: LogitsFn,
    x_adv: ArrayLike,
    y: ArrayLike,
    *,
    targeted: bool = False,
) -> Array:
    r"""Which examples of ``x_adv`` are adversarial, by re-predicting them.

    .. math::
        s_b = [\arg\max_c f(x'_b)_c \ne y_b] \quad\text{(untargeted)},\qquad
        s_b = [\arg\max_c f(x'_b)_c = y_b] \quad\text{(targeted)}.

    The logits are computed on ``x_adv`` cast to float32 (as the attacks do), so
    the answer is the one any re-prediction of the returned batch gives. An
    example whose logits are not finite is not adversarial. Works under ``jit``
    and ``vmap`` (everything is traced).

    Labels are checked as the attacks check them
    (:func:`jaxadv.validation.check_labels`): a ``ValueError`` for labels of the
    wrong shape or dtype and, when the values are concrete, for labels outside
    ``[0, C)`` and ``[batch, C]`` rows that are not one-hot (soft labels have no
    single class to compare the prediction with).

    Args:
      logits_fn: model ``x -> logits [batch, C]``.
      x_adv: ``[batch, ...]`` examples returned by an attack.
      y: ``[batch]`` integer labels (targets when ``targeted``) or ``[batch, C]``
        one-hot.
      targeted: success means predicting ``y`` instead of not predicting it.

    Returns:
      ``[batch]`` bool.
    """
    z = logits(logits_fn, jnp.asarray(x_adv).astype(jnp.float32))
    labels = check_labels(y, z.shape[0], z.shape[-1])
    return hits(z, labels, targeted)


def with_success(attack: Callable[..., Array]) -> Callable[..., AttackResult]:
    """Wrap an attack so that it returns ``AttackResult(x_adv, success)``.

    ``jaxadv.with_success(jaxadv.apgd)(logits_fn, x, y, key=k, eps=8 / 255)`` runs
    the attack unchanged and adds ``success = is_adversarial(logits_fn, x_adv, y,
    targeted=targeted)``. When ``y`` is ``None`` the labels are the model's
    predictions on the clean ``x`` (what the attack itself uses). Works for every
    attack with the library's ``attack(logits_fn, x, y=None, **kwargs)`` signature,
    under ``jit`` too.
    """

    @functools.wraps(attack)
    def wrapped(logits_fn: LogitsFn, x: ArrayLike, y: ArrayLike | None = None, **kwargs: Any) -> AttackResult:
        x_adv = attack(logits_fn, x, y, **kwargs)
        if y is None:
            y = jnp.argmax(logits(logits_fn, jnp.asarray(x).astype(jnp.float32)), axis=-1)
        success = is_adversarial(logits_fn, x_adv, y, targeted=bool(kwargs.get("targeted", False)))
        return AttackResult(x_adv, success)

    return wrapped


def stop_mask(z: Array, labels: Array, targeted: bool) -> Array:
    """``[batch]`` bool: the examples an attack stops on at scores ``z``: a success
    (:func:`jaxadv.success.hits`) or scores that are not finite. Its negation is the
    'still active' flag of the loops."""
    return hits(z, labels, targeted) | ~finite_rows(z)
