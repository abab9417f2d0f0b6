"""The adaptive re-attack of ``evaluate(..., adaptive=True)``: each example counted
robust on which an indicator of attack failure fired is attacked again with the fix
its indicator names, and the report keeps both figures.

The fixes, tried in this order on the examples that need them (an example leaves
once one of them fools it):

* ``bpda`` (``unavailable_gradients``, ``unconstrained_failure``,
  ``unstable_predictions``; only with a ``surrogate_fn``, for instance the model
  with :func:`jaxadv.bpda` around its non-differentiable layers): APGD-CE and
  APGD-DLR, 100 steps each, run on the surrogate; success is judged on the model;
* ``eot`` (``unstable_predictions`` of a randomised model): APGD-CE with the
  gradient averaged over 100 draws (``apgd-ce-eot20`` five times over);
* ``more-steps`` (``incomplete_optimization``, ``silent_success``): APGD-DLR with
  1,000 steps (ten times AutoAttack's budget);
* ``black-box`` (``unavailable_gradients``, ``unconstrained_failure``,
  ``unstable_predictions`` of a deterministic model): the Square Attack with
  10,000 queries, which needs no gradient.

Each fix runs as an :func:`jaxadv.evaluate` of its own on the examples that need
it, so that success is decided exactly as in the first run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, cast

import jax
import numpy as np

from jaxadv.attacks.apgd import apgd
from jaxadv.attacks.square import square
from jaxadv.evaluation.suites import SuiteAttack
from jaxadv.typing import Bounds, LogitsFn, Norm, PRNGKey

#: The fixes, in the order they run: name -> (the indicators it answers, what it runs).
FIXES: dict[str, tuple[tuple[str, ...], str]] = {
    "bpda": (
        ("unavailable_gradients", "unconstrained_failure", "unstable_predictions"),
        "APGD-CE and APGD-DLR (100 steps) on surrogate_fn, judged on the model",
    ),
    "eot": (("unstable_predictions",), "APGD-CE with the gradient averaged over 100 draws"),
    "more-steps": (("incomplete_optimization", "silent_success"), "APGD-DLR with 1000 steps"),
    "black-box": (
        ("unavailable_gradients", "unconstrained_failure", "unstable_predictions"),
        "Square with 10000 queries",
    ),
}


@dataclasses.dataclass
class AdaptiveReport:
    """What the adaptive re-attack did.

    Attributes:
      fooled: ``[n]`` bool, the examples counted robust by the suite that a fix fooled.
      ran: fix name -> how many examples it attacked.
      fooled_by_fix: fix name -> how many of them it fooled.
    """

    fooled: np.ndarray
    ran: dict[str, int]
    fooled_by_fix: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "fooled": np.asarray(self.fooled, bool).tolist(),
            "ran": dict(self.ran),
            "fooled_by_fix": dict(self.fooled_by_fix),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AdaptiveReport:
        return cls(
            np.asarray(d["fooled"], bool),
            {str(k): int(v) for k, v in d["ran"].items()},
            {str(k): int(v) for k, v in d["fooled_by_fix"].items()},
        )


def _member(name: str, run: Callable[..., Any], randomized: bool = False) -> SuiteAttack:
    return SuiteAttack(name, run, norms=("linf", "l2", "l1"), randomized=randomized)


def _fixes(surrogate_fn: LogitsFn | None, randomized: bool) -> dict[str, list[SuiteAttack]]:
    """The suite members of each fix (none where it does not apply)."""

    def on_surrogate(loss: str) -> Callable[..., Any]:
        def run(logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Norm, bounds: Any) -> Any:
            del logits_fn  # attacked through the surrogate; evaluate judges on the model
            return apgd(
                cast(LogitsFn, surrogate_fn), x, y, key=key, eps=eps, steps=100, norm=norm, loss=loss,
                bounds=bounds,
            )  # fmt: skip

        return run

    def eot(logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Norm, bounds: Any,
            randomized: bool = False) -> Any:  # fmt: skip
        return apgd(
            logits_fn, x, y, key=key, eps=eps, steps=100, norm=norm, loss="ce", bounds=bounds,
            num_samples=100, randomized=randomized,
        )  # fmt: skip

    def more_steps(logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Norm, bounds: Any) -> Any:
        return apgd(logits_fn, x, y, key=key, eps=eps, steps=1000, norm=norm, loss="dlr", bounds=bounds)

    def black_box(logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Norm, bounds: Any) -> Any:
        return square(logits_fn, x, y, key=key, eps=eps, queries=10000, norm=norm, bounds=bounds)

    bpda = [_member("bpda-apgd-ce", on_surrogate("ce")), _member("bpda-apgd-dlr", on_surrogate("dlr"))]
    return {
        "bpda": bpda if surrogate_fn is not None and not randomized else [],
        "eot": [_member("eot-apgd-ce", eot, randomized=True)] if randomized else [],
        "more-steps": [] if randomized else [_member("apgd-dlr-1000", more_steps)],
        "black-box": [] if randomized else [_member("square-10000", black_box)],
    }


def reattack(
    logits_fn: LogitsFn,
    x: np.ndarray,
    y: np.ndarray,
    flags: dict[str, np.ndarray],
    *,
    eps: float,
    norm: Norm,
    bounds: Bounds,
    key: PRNGKey,
    batch_size: int,
    randomized: bool,
    surrogate_fn: LogitsFn | None,
    evaluate: Callable[..., Any],
) -> tuple[np.ndarray, dict[str, int], dict[str, int]]:
    """Attack the flagged robust examples ``x`` ``[m, ...]`` again, fix by fix.

    Returns ``(fooled [m] bool, ran, fooled_by_fix)``.
    """
    m = len(y)
    fooled = np.zeros(m, bool)
    ran: dict[str, int] = {}
    won: dict[str, int] = {}
    for i, (name, members) in enumerate(_fixes(surrogate_fn, randomized).items()):
        if not members:
            continue
        need = np.zeros(m, bool)
        for indicator in FIXES[name][0]:
            need |= flags.get(indicator, np.zeros(m, bool))
        sel = np.nonzero(need & ~fooled)[0]
        if sel.size == 0:
            continue
        res = evaluate(
            logits_fn, x[sel], y[sel], eps=eps, norm=norm, suite=members, key=jax.random.fold_in(key, i),
            bounds=bounds, batch_size=batch_size, progress=False, checks=False, randomized=randomized,
        )  # fmt: skip
        hit = res.fooled_by >= 0
        fooled[sel[hit]] = True
        ran[name], won[name] = int(sel.size), int(np.sum(hit))
    return fooled, ran, won
