"""Bookkeeping: the best adversarial iterate per example, the highest-loss
iterate (:class:`BestLoss`, for a step-size part that restarts from it),
per-example early stop, and the query count of score-based attacks.

Success is :func:`jaxadv.success.hits` on the model's logits at an iterate
rounded to the caller's dtype (:func:`jaxadv.success.as_returned`), so it
agrees with re-predicting the returned array. An attack that keeps the best
iterate returns its last iterate when that is adversarial, otherwise the last
adversarial iterate it saw, otherwise the last iterate: a later step never
loses a success.

A run that keeps both records ends in an :class:`Outcome` per example (the
adversarial iterate, else the highest-loss one); :func:`merge` combines the
outcomes of restarts: an earlier success is kept, a new success replaces a
failure, and among failures the higher objective wins.

A score-based attack (:func:`jaxadv.spsa`, :func:`jaxadv.nes`) keeps a
:class:`QueryCount` instead, under the rules of :mod:`jaxadv.attacks.blackbox`:
each new iterate is evaluated once, an example stops (is frozen, and stops
spending queries) at its first success, and each example's evaluations are
counted.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxadv._core.rows import select_rows
from jaxadv.losses import finite_rows
from jaxadv.success import hits
from jaxadv.typing import Array

__all__ = [
    "Best",
    "BestLoss",
    "Outcome",
    "QueryCount",
    "charge",
    "init_best",
    "init_best_loss",
    "merge",
    "no_outcome",
    "objective",
    "record",
    "record_loss",
    "select",
]


class Best(NamedTuple):
    """Attributes: ``x_adv`` the last adversarial iterate seen (``[batch, ...]``),
    ``found`` ``[batch]`` bool."""

    x_adv: Array
    found: Array


def init_best(x: Array) -> Best:
    """Nothing found yet."""
    return Best(x, jnp.zeros((x.shape[0],), bool))


def record(best: Best, x_t: Array, logits: Array, labels: Array, targeted: bool) -> tuple[Best, Array]:
    """Record ``x_t`` where it is adversarial; returns the new record and that mask."""
    hit = hits(logits, labels, targeted)
    return Best(select_rows(hit, x_t, best.x_adv), best.found | hit), hit


class BestLoss(NamedTuple):
    """The highest-objective iterate per example, and its gradient: where a
    step-size part that restarts (:func:`jaxadv.compose.checkpoint_halving`) goes
    back to. Attributes: ``x`` ``[batch, ...]``, ``grad`` ``[batch, ...]``,
    ``objective`` ``[batch]`` (``-inf`` before the first finite one)."""

    x: Array
    grad: Array
    objective: Array


def objective(loss: Array, ok: Array, targeted: bool) -> Array:
    """``[batch]`` the attacker's objective: the loss, negated when ``targeted`` (a
    targeted loss falls as the attack nears its target); ``-inf`` where ``ok`` is
    false or the loss is not finite, so that such a point is never the best."""
    return jnp.where(ok & jnp.isfinite(loss), -loss if targeted else loss, -jnp.inf)


def init_best_loss(x: Array) -> BestLoss:
    """Nothing recorded yet."""
    return BestLoss(x, jnp.zeros(x.shape, jnp.float32), jnp.full(x.shape[:1], -jnp.inf, jnp.float32))


def record_loss(best: BestLoss, x_t: Array, grad: Array, objective: Array) -> BestLoss:
    """Keep ``x_t`` and ``grad`` where ``objective`` beats the record (ties keep the older)."""
    better = objective > best.objective
    return BestLoss(
        select_rows(better, x_t, best.x),
        select_rows(better, grad, best.grad),
        jnp.where(better, objective, best.objective),
    )


def select(best: Best, x_t: Array, logits: Array, x: Array, labels: Array, targeted: bool) -> Array:
    """The example to return: ``x_t`` if adversarial, else the recorded one, else
    ``x_t``; ``x`` where the model is not finite at ``x_t``."""
    hit = hits(logits, labels, targeted)
    out = select_rows(finite_rows(logits), x_t, x)
    return select_rows(~hit & best.found, best.x_adv, out)


class QueryCount(NamedTuple):
    """The bookkeeping of a score-based attack.

    Attributes:
      key: ``[batch]`` keys: each example's chain its step keys are split from.
      done: ``[batch]`` bool, the example has stopped: a success on an evaluated
        iterate, or clean scores that are not finite.
      queries: ``[batch]`` int32, the model evaluations spent per example.
    """

    key: Array
    done: Array
    queries: Array


def charge(
    count: QueryCount, chain: Array, logits: Array, labels: Array, targeted: bool, cost: int
) -> tuple[QueryCount, Array]:
    """Charge ``cost`` evaluations to each active example and stop those that the
    new iterate's ``logits`` show adversarial. Returns the new count and the
    ``[batch]`` mask of examples that were active (not done) before this step."""
    active = ~count.done
    done = count.done | (active & hits(logits, labels, targeted))
    return QueryCount(chain, done, count.queries + active.astype(jnp.int32) * cost), active


class Outcome(NamedTuple):
    """The end of a run, per example: ``x`` ``[batch, ...]`` the point to return,
    ``found`` ``[batch]`` bool whether it fools the model, ``objective``
    ``[batch]`` the highest objective seen (``-inf`` when none was finite)."""

    x: Array
    found: Array
    objective: Array


def no_outcome(x: Array) -> Outcome:
    """Before any run: ``x`` itself, nothing found, objective ``-inf``."""
    return Outcome(x, jnp.zeros((x.shape[0],), bool), jnp.full((x.shape[0],), -jnp.inf, jnp.float32))


@jax.jit
def merge(prior: Outcome, new: Outcome) -> Outcome:
    """Combine two runs' outcomes per example: an earlier success is kept, a new
    success replaces a failure, and between two failures the higher objective
    wins (a tie keeps the earlier)."""
    new_hit = new.found & ~prior.found
    higher = ~new.found & ~prior.found & (new.objective > prior.objective)
    take = new_hit | higher
    return Outcome(
        select_rows(take, new.x, prior.x),
        prior.found | new.found,
        jnp.where(higher, new.objective, prior.objective),
    )
