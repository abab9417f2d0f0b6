r"""What the black-box attacks share: query budgets, stopping rules, the result.

The score-based attacks (:func:`jaxadv.square`, :func:`jaxadv.spsa`,
:func:`jaxadv.nes`) and the decision-based one (:func:`jaxadv.hop_skip_jump`)
query the model and never differentiate it. They follow the library's result
convention (:class:`jaxadv.AttackResult`): they return the adversarial batch,
and with ``return_info=True`` an ``AttackResult(x_adv, success, queries)``.
They share these rules:

* ``queries`` (static) is a per-example budget of model evaluations. The
  evaluation of the clean input counts as the first query. ``result.queries``
  holds, per example, the number of evaluations whose answers the attack used;
  it never exceeds the budget.
* Success is :func:`jaxadv.success.hits` (the argmax test of
  :func:`jaxadv.is_adversarial`, ties included), everywhere: an example stops
  (is frozen, and stops spending queries) as soon as it is misclassified
  (untargeted) or classified as its target (targeted).
* ``result.success`` is recomputed by one final evaluation of the returned
  examples (a check, not counted in ``queries``).
* A point where the model's scores are not finite (NaN or inf) is never a
  success nor an improvement. Examples whose clean scores are not finite are
  returned unchanged after the first query; an empty batch is returned as it is.
* The loops run through :func:`jaxadv.engine.iterate` with fixed shapes: rows of
  frozen examples still travel through the model in each batched call, but
  their answers are discarded and not counted. A model built by
  :func:`jaxadv.from_callable` therefore sees the whole batch at each call.
* The model is only ever evaluated, never differentiated: a model whose
  gradient raises (every :func:`jaxadv.from_callable` model) works.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxadv import validation
from jaxadv._core.problem import Problem
from jaxadv.success import AttackResult
from jaxadv.typing import Array
from jaxadv.validation import check_steps, is_traced


def check_queries(queries: Any, minimum: int) -> int:
    """A static per-example query budget of at least ``minimum``."""
    queries = check_steps(queries, "queries")
    if queries < minimum:
        raise ValueError(f"queries must be >= {minimum} for this attack, got {queries}")
    return queries


def check_key(key: Any) -> None:
    """Every black-box attack draws random numbers: ``key`` must be one PRNG key
    or a ``[batch]`` array of keys (one per example)."""
    if key is None:
        raise ValueError("key is required (pass key=jax.random.key(0))")
    validation.check_key(key, per_example=True)


def check_finite_eps(p: Problem, *, allow_inf: bool = True) -> None:
    """Refuse (concrete values) ``eps = inf`` with unbounded ``bounds``, or at all when
    ``allow_inf`` is false."""
    if is_traced(p.eps, p.lo, p.hi) or bool(jnp.all(jnp.isfinite(p.eps))):
        return
    if not allow_inf:
        raise ValueError("eps must be finite for this attack and norm, got eps=inf")
    if not bool(jnp.all(jnp.isfinite(p.lo)) & jnp.all(jnp.isfinite(p.hi))):
        raise ValueError("eps is infinite and bounds are unbounded: pass a finite eps or finite bounds")


def empty_result(p: Problem, *, return_info: bool) -> Array | AttackResult:
    """The output for a batch of 0 examples (the model is not called)."""
    out = p.finalize(p.x)
    if not return_info:
        return out
    return AttackResult(out, jnp.zeros((0,), bool), jnp.zeros((0,), jnp.int32))


def finish(
    p: Problem, x_adv: Array, queries: Array, *, targeted: bool, return_info: bool
) -> Array | AttackResult:
    """Cast back to the caller's dtype; with ``return_info``, re-evaluate success on the
    returned examples (:meth:`jaxadv.attacks.base.Problem.output`) and attach the query counts."""
    out = p.output(
        p.finalize(x_adv), targeted=targeted, return_info=return_info, queries=queries.astype(jnp.int32)
    )
    if not is_traced(out):
        out = jax.block_until_ready(out)
    return out
