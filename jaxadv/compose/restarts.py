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

import jax.numpy as jnp

from jaxadv._core.compile import jit
from jaxadv._core.problem import check_finite_step, check_step_size
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

__all__ = ["Restarts", "clean_not_finite", "restarts", "settled"]


@functools.partial(jit, static_argnames=("model",))
def clean_not_finite(params: Any, x: Array, *, model: Any) -> Array:
    """``[batch]`` bool: the examples whose clean logits are not all finite (no run
    changes them; they are returned as they are)."""
    return ~finite_rows(combine_model(model, params)(x))


def settled(out: Outcome, clean_bad: Array) -> bool:
    """Whether no further run can change ``out``: every example fooled or with clean
    logits that are not finite (``False`` under a transformation)."""
    return not is_traced(out.found) and bool(jnp.all(out.found | clean_bad))


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
        clean_bad = clean_not_finite(p.params, p.x, model=p.model)
        q = loop_problem(p, a.randomized)
        out = no_outcome(p.x)
        for r in range(self.num_restarts):
            run_key = fold_rows(keys, r)
            run = dict(key=run_key, step_size=alpha, steps=steps, targeted=targeted, loop=loop)
            new, _ = run_books(a, q, a.start(q, run_key), **run)  # type: ignore[arg-type]
            out = merge(out, new)
            if settled(out, clean_bad):
                break
        x_adv = p.finalize(select_rows(clean_bad, p.x, out.x))
        return p.output(x_adv, targeted=targeted, return_info=return_info, trace=out.flags)


def restarts(attack: Attack, *, num_restarts: int) -> Restarts:
    """:class:`Restarts`: ``num_restarts`` runs of ``attack``, outcomes merged."""
    return Restarts(attack, num_restarts)
