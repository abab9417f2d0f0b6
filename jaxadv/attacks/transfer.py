r"""Transfer attacks: craft on surrogates you can differentiate, evaluate on a target.

Adversarial examples transfer (Szegedy et al., 2014; Papernot et al., 2016):
crafted with the gradient of one model, they often fool another model trained
on the same task. :func:`transfer` runs any attack of the library on a
surrogate, or on an ensemble of surrogates (:func:`ensemble_logits`, averaged
logits as in Liu et al., 2017 and Dong et al., 2018), and reports how often
the examples fool the target. The target is only evaluated (one batched
forward pass), so it may be any model, including a black box built by
:func:`jaxadv.from_callable`.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from jaxadv.callables import reraise_callable_errors
from jaxadv.losses import log_softmax
from jaxadv.models import logits as model_logits
from jaxadv.success import AttackResult, hits
from jaxadv.typing import Array, ArrayLike, LogitsFn

__all__ = ["TransferResult", "ensemble_logits", "transfer"]


def _mean_logits(fns: tuple[Any, ...], x: Array) -> Array:
    return sum(f(x).astype(jnp.float32) for f in fns) / len(fns)


def _mean_log_probs(fns: tuple[Any, ...], x: Array) -> Array:
    logp = jnp.stack([log_softmax(f(x)) for f in fns])
    return jax.nn.logsumexp(logp, axis=0) - jnp.log(len(fns))


def ensemble_logits(*logits_fns: LogitsFn, mode: Literal["logits", "probs"] = "logits") -> LogitsFn:
    r"""An ensemble of models as one model, usable by every attack.

    * ``mode="logits"``: :math:`z(x) = \frac1K\sum_k z_k(x)` (the logit ensemble of
      Dong et al., 2018).
    * ``mode="probs"``: :math:`z(x) = \log \frac1K\sum_k \mathrm{softmax}(z_k(x))`,
      the log of the averaged predicted probabilities (Liu et al., 2017).

    The result is a :class:`jax.tree_util.Partial` whose leaves are the members'
    parameters: the attacks trace them, so new weights do not recompile.

    Args:
      *logits_fns: the members, each ``x -> logits [batch, C]`` with the same ``C``.
      mode: ``"logits"`` or ``"probs"``.

    Returns:
      ``logits_fn(x) -> [batch, C]`` float32.
    """
    if not logits_fns:
        raise ValueError("ensemble_logits needs at least one model")
    if mode not in ("logits", "probs"):
        raise ValueError(f"mode must be 'logits' or 'probs', got {mode!r}")
    for f in logits_fns:
        if not callable(f):
            raise ValueError(f"every member must be callable, got {type(f).__name__}")
    combine = _mean_logits if mode == "logits" else _mean_log_probs
    return jax.tree_util.Partial(combine, tuple(logits_fns))


class TransferResult(NamedTuple):
    """Result of :func:`transfer`.

    Attributes:
      x_adv: ``[batch, ...]`` examples crafted on the surrogate(s).
      success: ``[batch]`` bool: the target is fooled (predicts a class other
        than ``y``, or the target class ``y`` when targeted).
      success_rate: scalar, the transfer success rate: the mean of ``success``
        over the examples on which the target was not already fooled by the
        clean input (NaN when there is none).
      surrogate_success_rate: scalar, the same rate on the surrogate (white-box).
      clean_fooled: ``[batch]`` bool: the target was already fooled by ``x``.
    """

    x_adv: Array
    success: Array
    success_rate: Array
    surrogate_success_rate: Array
    clean_fooled: Array


def _rate(success: Array, eligible: Array) -> Array:
    n = jnp.sum(eligible)
    return jnp.where(n > 0, jnp.sum(success & eligible) / jnp.maximum(n, 1), jnp.nan)


def transfer(
    attack: Callable[..., Any],
    surrogates: LogitsFn | Sequence[LogitsFn],
    target: LogitsFn,
    x: ArrayLike,
    y: ArrayLike,
    *,
    targeted: bool = False,
    ensemble: Literal["logits", "probs"] = "logits",
    **attack_kwargs: Any,
) -> TransferResult:
    r"""Transfer attack: craft with ``attack`` on the surrogate(s), evaluate on ``target``.

    ``x_adv = attack(surrogate, x, y, targeted=targeted, **attack_kwargs)``, where
    ``surrogate`` is the single model given or :func:`ensemble_logits` of the
    sequence (averaged logits, or averaged probabilities with
    ``ensemble="probs"``). Any attack of the library works as the crafting
    step (:func:`jaxadv.fgsm`, :func:`jaxadv.bim`, :func:`jaxadv.pgd`,
    :func:`jaxadv.mifgsm` with input diversity, the black-box attacks...); an
    attack called with ``return_info=True`` contributes its ``x_adv``. The target is
    only evaluated, never differentiated.

    Untargeted: ``y`` are the true labels and the target is fooled when
    :math:`\arg\max f_T(x') \ne y`. Targeted: ``y`` are the target classes and the
    target is fooled when :math:`\arg\max f_T(x') = y`. The success rate is
    measured over the examples whose clean input does not already fool the
    target (for the untargeted case: those the target classifies correctly).

    Args:
      attack: an attack with the library's signature ``attack(logits_fn, x, y, *, ...)``.
      surrogates: a model or a sequence of models (an ensemble).
      target: the model under attack (any ``logits_fn``, e.g. from
        :func:`jaxadv.from_callable`).
      x: ``[batch, ...]`` clean inputs.
      y: ``[batch]`` labels (targets when ``targeted``); required, because the
        surrogate's and the target's predictions may differ.
      targeted: craft and measure a targeted attack.
      ensemble: ``"logits"`` or ``"probs"``, for a sequence of surrogates.
      **attack_kwargs: forwarded to ``attack`` (``eps=``, ``steps=``, ``key=``...).

    Returns:
      :class:`TransferResult`.
    """
    if y is None:
        raise ValueError("transfer needs y: the true labels, or the target classes when targeted")
    if isinstance(surrogates, (list, tuple)):
        if not surrogates:
            raise ValueError("surrogates must hold at least one model")
        surrogate = surrogates[0] if len(surrogates) == 1 else ensemble_logits(*surrogates, mode=ensemble)
    else:
        surrogate = surrogates
    if targeted:
        attack_kwargs["targeted"] = True
    out = attack(surrogate, x, y, **attack_kwargs)
    x_adv = jnp.asarray(out.x_adv if isinstance(out, AttackResult) else out)
    x32 = jnp.asarray(x, jnp.float32)
    with reraise_callable_errors():
        z_clean = model_logits(target, x32)
        z_adv = model_logits(target, x_adv.astype(jnp.float32))
        clean_fooled = hits(z_clean, y, targeted)
        success = hits(z_adv, y, targeted)
        clean_fooled, success = jax.block_until_ready((clean_fooled, success))
    eligible = ~clean_fooled
    z_sur = model_logits(surrogate, x_adv.astype(jnp.float32))
    sur_success = hits(z_sur, y, targeted)
    sur_eligible = ~hits(model_logits(surrogate, x32), y, targeted)
    return TransferResult(
        x_adv=x_adv,
        success=success,
        success_rate=_rate(success, eligible),
        surrogate_success_rate=_rate(sur_success, sur_eligible),
        clean_fooled=clean_fooled,
    )
