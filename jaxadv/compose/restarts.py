r"""Restarts: an attack run several times from random starts, the outcomes merged.

:class:`Restarts` wraps an :class:`~jaxadv.compose.Attack` that keeps its best
iterates (``keep_best`` with a step-size part that restarts, such as
:func:`~jaxadv.compose.checkpoint_halving`) and a random start. Run ``r`` draws
its start and its steps from ``fold_in(key_b, r)`` of each example's key; the
runs' :class:`~jaxadv.compose.Outcome`\ s are merged per example by
:func:`~jaxadv.compose.merge` (an earlier success is kept, a new success
replaces a failure, between failures the higher loss wins). Called on concrete
inputs, the runs stop once every example is fooled (or has clean logits that
are not finite, which no run changes); under a transformation all runs are
taken. :func:`jaxadv.apgd` is this wrapper around its configuration::

    apgd_ce = compose.restarts(
        compose.Attack(compose.loss_gradient(), compose.heavy_ball(0.75), norm="linf",
                       schedule=compose.checkpoint_halving(0.75), random_start=True,
                       keep_best=True),
        num_restarts=5,
    )
    x_adv = apgd_ce(logits_fn, x, y, key=key, eps=8 / 255, steps=100, step_size=16 / 255)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxadv._core.problem import Problem, check_finite_step, check_step_size
from jaxadv._core.randomised import loop_problem, prepare_problem
from jaxadv._core.rows import select_rows
from jaxadv.compose.bookkeeping import Outcome, merge, no_outcome
from jaxadv.compose.loop import Attack, run_books
from jaxadv.compose.sources import _pytree, check_parts
from jaxadv.compose.step_sizes import Fixed
from jaxadv.keys import fold_rows, row_keys
from jaxadv.losses import finite_rows
from jaxadv.models import combine_model
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, LoopMode, PRNGKey
from jaxadv.validation import check_key, check_steps, is_traced

__all__ = ["Restarts", "restarts", "run_restarts"]


@functools.partial(jax.jit, static_argnames=("model",))
def _clean_bad(params: Any, x: Array, *, model: Any) -> Array:
    return ~finite_rows(combine_model(model, params)(x))


def settled(out: Outcome, clean_bad: Array) -> bool:
    """Whether no further run can change ``out``: every example fooled or with clean
    logits that are not finite (``False`` under a transformation)."""
    return not is_traced(out.found) and bool(jnp.all(out.found | clean_bad))


def run_restarts(
    attack: Attack,
    p: Problem,
    keys: list[PRNGKey],
    *,
    start: Any,
    step_size: Array,
    steps: int,
    targeted: bool,
    loop: LoopMode,
    prior: Outcome | None = None,
    clean_bad: Array | None = None,
    loss_labels: Array | None = None,
    step_keys: Any = None,
) -> Outcome:
    """Run ``attack`` once per key of ``keys`` (each ``[batch]`` keys) from
    ``start(p, key)`` and merge the outcomes into ``prior``; stop early once
    :func:`settled` (when ``clean_bad`` is given). ``step_keys(key)``: the keys of
    a run's steps (the run's key by default)."""
    out = no_outcome(p.x) if prior is None else prior
    for key in keys:
        new, _ = run_books(
            attack,
            p,
            start(p, key),
            key=key if step_keys is None else step_keys(key),
            step_size=step_size,
            steps=steps,
            targeted=targeted,
            loop=loop,
            loss_labels=loss_labels,
        )
        out = merge(out, new)
        if clean_bad is not None and settled(out, clean_bad):
            break
    return out


@_pytree(data=("attack",), meta=("num_restarts",))
@dataclasses.dataclass(frozen=True)
class Restarts:
    """``num_restarts`` runs of ``attack`` with merged outcomes (module docstring).

    Attributes:
      attack: an :class:`~jaxadv.compose.Attack` with ``random_start``,
        ``keep_best`` and a step-size part that restarts.
      num_restarts: the number of runs (static).
    """

    attack: Any
    num_restarts: int = 1

    def __post_init__(self) -> None:
        a = self.attack
        if not isinstance(a, Attack):
            raise TypeError(f"restarts wraps a compose.Attack, got {type(a).__name__}")
        if not (a.keep_best and a.random_start) or isinstance(a.schedule, Fixed):
            raise ValueError(
                "restarts needs an attack with random_start, keep_best and a step-size part that "
                "restarts (it merges the runs by success, then by the highest loss each kept)"
            )
        check_steps(self.num_restarts, "num_restarts")

    def __call__(
        self,
        logits_fn: LogitsFn,
        x: ArrayLike,
        y: ArrayLike | None = None,
        *,
        key: PRNGKey,
        eps: ArrayLike,
        step_size: ArrayLike | None = None,
        steps: int = 10,
        targeted: bool = False,
        bounds: Bounds = (0.0, 1.0),
        loop: LoopMode = "auto",
        return_info: bool = False,
    ) -> Any:
        """Run the restarts; arguments and result as :meth:`Attack.__call__`
        (``key`` required: the starts are random)."""
        a = self.attack
        steps = check_steps(steps)
        for part in (a.source, a.rule, a.schedule):
            check_parts(part)
        if key is None:
            raise ValueError("key is required for the random starts (pass key=jax.random.key(0))")
        check_key(key, per_example=True)
        p = prepare_problem(
            logits_fn, x, y, key=key, randomized=a.randomized, bounds=bounds, targeted=targeted, eps=eps
        )
        alpha = check_step_size(a.step_factor * p.eps / steps if step_size is None else step_size, p.x)
        check_finite_step(alpha, p.lo, p.hi)
        if p.empty:
            return p.output(p.finalize(p.x), targeted=targeted, return_info=return_info)
        keys = row_keys(key, p.x.shape[0])
        clean_bad = _clean_bad(p.params, p.x, model=p.model)
        out = run_restarts(
            a,
            loop_problem(p, a.randomized),
            [fold_rows(keys, r) for r in range(self.num_restarts)],
            start=a.start,
            step_size=alpha,
            steps=steps,
            targeted=targeted,
            loop=loop,
            clean_bad=clean_bad,
        )
        x_adv = p.finalize(select_rows(clean_bad, p.x, out.x))
        return p.output(x_adv, targeted=targeted, return_info=return_info)


def restarts(attack: Attack, *, num_restarts: int) -> Restarts:
    """:class:`Restarts`: ``num_restarts`` runs of ``attack``, outcomes merged."""
    return Restarts(attack, num_restarts)
