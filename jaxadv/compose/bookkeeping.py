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

With ``trace`` an attack also keeps a :class:`Trace` per example, what the
indicators of attack failure (:mod:`jaxadv.evaluation.diagnostics`) read off
the run from what its steps compute anyway (see :mod:`jaxadv.compose.loop`):
whether some iterate was adversarial, the rise
of its margin (:func:`margin_objective`, whatever loss the attack ascends) over
the first and the last quarter of the steps, and whether the gradient was ever
not finite or vanishing before the first success.
:func:`trace_flags` turns it into :class:`TraceFlags`, which restarts and the
members of a suite combine with :func:`merge_flags`.

A score-based attack (:func:`jaxadv.spsa`, :func:`jaxadv.nes`) keeps a
:class:`QueryCount` instead, under the rules of :mod:`jaxadv.attacks.blackbox`:
each new iterate is evaluated once, an example stops (is frozen, and stops
spending queries) at its first success, and each example's evaluations are
counted.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxadv._core.rows import select_rows
from jaxadv.losses import finite_rows
from jaxadv.success import hits
from jaxadv.threat_models import norm_of
from jaxadv.typing import Array, Norm

__all__ = [
    "Best",
    "BestLoss",
    "Outcome",
    "QueryCount",
    "Trace",
    "TraceFlags",
    "charge",
    "init_best",
    "init_best_loss",
    "init_trace",
    "margin_objective",
    "merge",
    "merge_flags",
    "no_outcome",
    "objective",
    "record",
    "record_iterate",
    "record_loss",
    "record_trace",
    "select",
    "still_rising",
    "trace_flags",
    "vanishing",
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
    ``[batch]`` the highest objective seen (``-inf`` when none was finite), and
    ``flags`` the run's :class:`TraceFlags` when it kept a trace (else ``None``)."""

    x: Array
    found: Array
    objective: Array
    flags: TraceFlags | None = None


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
        merge_flags(prior.flags, new.flags),
    )


# A gradient vanishes when the budget spent along it, eps * ||g||_dual, would move
# the objective by at most this much of max(1, |objective|).
_VANISH = 1e-6


def margin_objective(logits: Array, labels: Array, targeted: bool) -> Array:
    r"""``[batch]`` how far an iterate is past the decision boundary, from its
    ``logits`` ``[batch, C]``: :math:`\max_{j \ne y} z_j - z_y` (positive when
    adversarial, up to ties), or :math:`z_t - \max_{j \ne t} z_j` when
    ``targeted``; ``-inf`` where the logits are not finite. ``labels``: ``[batch]``
    ints or ``[batch, C]`` one-hot."""
    z = logits.astype(jnp.float32)
    onehot = labels if labels.ndim == 2 else jax.nn.one_hot(labels, z.shape[-1])
    own = jnp.sum(jnp.where(onehot > 0, z, 0.0), axis=-1)
    other = jnp.max(jnp.where(onehot > 0, -jnp.inf, z), axis=-1)
    m = own - other if targeted else other - own
    return jnp.where(finite_rows(z) & jnp.isfinite(m), m, -jnp.inf)


def vanishing(reach: Array, loss: Array) -> Array:
    r"""``[batch]`` bool: the budget along the gradient, ``reach`` :math:`=
    \epsilon \|g\|_*` (the dual norm), would move the ``loss`` by at most
    :math:`10^{-6} \max(1, |L|)`: the gradient vanishes. A NaN reach (an infinite
    radius times a zero gradient) vanishes."""
    scale = jnp.maximum(1.0, jnp.abs(jnp.where(jnp.isfinite(loss), loss, 0.0)))
    return ~(reach > _VANISH * scale)


class Trace(NamedTuple):
    r"""A run's per-example record for the indicators of attack failure (each
    attribute ``[batch]``, except ``late_from``).

    Attributes:
      ever: bool, some iterate was adversarial.
      first: the margin (:func:`margin_objective`) at the first iterate.
      early: the highest margin over the iterates before ``late_from``.
      late: the highest margin over the iterates from ``late_from`` on.
      broken: bool, the logits or the gradient were not finite at some iterate.
      vanished: bool, the gradient vanished at the first iterate, or at an
        iterate before the first adversarial one (see :func:`record_iterate`).
      late_from: ``[]`` int32, the first iterate of the last quarter.
    """

    ever: Array
    first: Array
    early: Array
    late: Array
    broken: Array
    vanished: Array
    late_from: Array


def init_trace(x: Array, steps: int) -> Trace:
    """Nothing recorded yet, for a run of ``steps`` steps on ``x`` ``[batch, ...]``
    (the iterates ``0 .. steps - 1``, and the last one where the run evaluates it)."""
    b = x.shape[0]
    no, low = jnp.zeros((b,), bool), jnp.full((b,), -jnp.inf, jnp.float32)
    late_from = jnp.int32(steps - max(1, (steps + 1) // 4))
    return Trace(no, low, low, low, no, no, late_from)


def record_trace(trace: Trace, i: Array, margin: Array, ok: Array, vanish: Array, adv: Array) -> Trace:
    """Record iterate ``i`` (``[batch]`` each): its ``margin``, ``ok`` whether its
    logits and gradient were finite, ``vanish`` whether the gradient vanished
    there, ``adv`` whether it is adversarial."""
    safe = jnp.where(jnp.isfinite(margin), margin, -jnp.inf)
    vanish = ok & vanish
    late = i >= trace.late_from
    return Trace(
        trace.ever | adv,
        jnp.where(i == 0, safe, trace.first),
        jnp.where(late, trace.early, jnp.maximum(trace.early, safe)),
        jnp.where(late, jnp.maximum(trace.late, safe), trace.late),
        trace.broken | ~ok,
        trace.vanished | (vanish & ((i == 0) | ~trace.ever)),
        trace.late_from,
    )


class TraceFlags(NamedTuple):
    """What a trace says per example (``[batch]`` bool each): ``ever`` some iterate
    was adversarial; ``incomplete`` none was and the objective was still rising
    at the end; ``unavailable`` the gradient was not finite at some iterate, or
    vanished at the first one or before the first success."""

    ever: Array
    incomplete: Array
    unavailable: Array


def still_rising(first: Array, early: Array, late: Array, tolerance: float) -> Array:
    r"""``[batch]`` bool: a margin that was still rising when the budget ended, fast
    enough to matter. With :math:`m_0` its first value, :math:`E` and :math:`L` its
    best before and in the last quarter of the iterates and :math:`R = \max(E, L)
    - m_0` its rise: :math:`R > 0`, :math:`L - E > \text{tolerance}\cdot R`, and
    :math:`L + 4 (L - E) > 0`: as many steps again, at the last quarter's pace,
    would cross the decision boundary (a margin that creeps up far from it is
    converged for the purpose of the attack)."""
    gain = late - early
    rise = jnp.maximum(early, late) - first
    return jnp.isfinite(rise) & (rise > 0) & (gain > tolerance * rise) & (late + 4.0 * gain > 0)


#: The dual of each norm: the budget ``eps`` along a gradient ``g`` moves a linear
#: objective by ``eps * ||g||_dual``.
DUAL: dict[str, Norm] = {"linf": "l1", "l2": "l2", "l1": "linf"}


def record_iterate(
    trace: Trace, i: Array, logits: Array, g: Any, labels: Array, targeted: bool, *, eps: Array, norm: Norm
) -> Trace:
    """:func:`record_trace` of iterate ``i`` from what a step of the loop has there:
    the model's ``logits`` and the gradient source's output ``g`` (its ``grad``
    and ``ok``), for a run of radius ``eps`` in ``norm``.

    The gradient vanishes here when it is zero: the loop's steps follow its
    direction, not its size, so a tiny but nonzero gradient (a saturated
    cross-entropy's, say) still leads somewhere. (:func:`vanishing`, relative to
    the loss, is the test of a diagnostic attack on the margin, whose gradient
    does not saturate.)"""
    reach = eps * norm_of(g.grad, DUAL[norm])
    margin = margin_objective(logits, labels, targeted)
    adv = hits(logits, labels, targeted)
    return record_trace(trace, i, margin, g.ok, ~(reach > 0), adv)


def trace_flags(trace: Trace, tolerance: float = 0.05) -> TraceFlags:
    """The flags of a finished trace. ``incomplete``: no iterate was adversarial
    and the margin was still rising (:func:`still_rising`)."""
    rising = still_rising(trace.first, trace.early, trace.late, tolerance)
    return TraceFlags(trace.ever, ~trace.ever & rising, trace.broken | trace.vanished)


def merge_flags(a: TraceFlags | None, b: TraceFlags | None) -> TraceFlags | None:
    """The flags of two runs on the same examples (``None`` when neither kept a
    trace): ``ever`` where either found an adversarial iterate; ``incomplete``
    where neither did and either was still rising; ``unavailable`` where both
    lacked a gradient (one run with a usable gradient, say on another loss,
    is an attack that could move)."""
    if a is None or b is None:
        return a if b is None else b
    ever = a.ever | b.ever
    return TraceFlags(ever, ~ever & (a.incomplete | b.incomplete), a.unavailable & b.unavailable)
