r"""APGD as a configuration of :mod:`jaxadv.compose` (the algorithm is described in
:mod:`jaxadv.attacks.apgd`): the parts of one run, one run (with L1's shrinking
radii), and the checks shared by :func:`jaxadv.apgd` and :func:`jaxadv.apgd_targeted`.

* L-inf / L2: :class:`~jaxadv.compose.HeavyBall` (momentum 0.75 on projected
  steps) with :class:`~jaxadv.compose.CheckpointHalving` (``rho``), from
  :math:`\eta = 2\epsilon`;
* L1: :class:`~jaxadv.compose.SparseSteepest` with
  :class:`~jaxadv.compose.SparsityCheckpoints`, from :math:`\eta = \epsilon`;

both with a random start, the exact projection onto ball and box, and the
books of the best iterates (``keep_best``: the adversarial iterate, else the
highest-loss one); restarts and target classes merge the runs' outcomes
(:func:`jaxadv.compose.merge`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from jaxadv._core.problem import Problem
from jaxadv.compose.bookkeeping import Outcome, merge
from jaxadv.compose.loop import Attack, run_books
from jaxadv.compose.sources import EOT, LossGradient
from jaxadv.compose.step_sizes import CheckpointHalving, SparsityCheckpoints
from jaxadv.compose.updates import HeavyBall, SparseSteepest
from jaxadv.keys import fold_rows
from jaxadv.threat_models import project_l1_box
from jaxadv.typing import Array, LoopMode, LossFn, Norm, PRNGKey
from jaxadv.validation import check_key, check_norm, check_steps

__all__ = ["configuration", "stage_steps"]

# A run's gradient draws use keys folded from its key with this tag, so that
# they are independent of its random start.
_GRAD = 0x6AD


def configuration(
    loss: LossFn,
    *,
    norm: Norm,
    rho: float = 0.75,
    early_stop: bool = True,
    eot_samples: int = 1,
    transform: Any = None,
    randomized: bool = False,
    warm_start: bool = False,
    trace: bool = False,
) -> Attack:
    """The :class:`~jaxadv.compose.Attack` of one APGD run on ``loss`` (module
    docstring); ``warm_start``: an L1 run that continues from an earlier run's
    point (the stages of ``shrinking_eps``); ``trace``: keep the run's
    :class:`~jaxadv.compose.Trace`."""
    source = _gradient_source(loss, eot_samples, transform, randomized)
    common = dict(random_start=True, keep_best=True, early_stop=early_stop, randomized=randomized)
    common["trace"] = trace
    if check_norm(norm) == "l1":
        return Attack(source, SparseSteepest(), norm="l1", schedule=SparsityCheckpoints(warm_start), **common)  # type: ignore[arg-type]
    rule = HeavyBall(np.float32(0.75))  # NumPy scalars: leaves without a device transfer
    schedule = CheckpointHalving(np.float32(rho))
    return Attack(source, rule, norm=norm, schedule=schedule, **common)  # type: ignore[arg-type]


def _gradient_source(loss: LossFn, eot_samples: int, transform: Any, randomized: bool) -> Any:
    """The exact gradient of ``loss``, or its mean over draws when there is randomness."""
    if eot_samples == 1 and transform is None and not randomized:
        return LossGradient(loss)
    return EOT(LossGradient(loss), eot_samples, transform)


def stage_steps(steps: int) -> tuple[int, int, int]:
    """Iterations at :math:`3\\epsilon`, :math:`2\\epsilon` and :math:`\\epsilon` with
    ``shrinking_eps``: ``ceil(0.3 N)``, ``ceil(0.3 N)`` and the rest."""
    first = math.ceil(0.3 * steps)
    return first, first, steps - 2 * first


def _run(
    p: Problem,
    key: PRNGKey,
    loss_labels: Array,
    loss: LossFn,
    prior: Outcome,
    *,
    steps: int,
    norm: Norm,
    rho: float,
    early_stop: bool,
    loop: LoopMode,
    targeted: bool = False,
    eot_samples: int = 1,
    transform: Any = None,
    randomized: bool = False,
    shrinking_eps: bool = False,
    trace: bool = False,
) -> Outcome:
    r"""One APGD run from a random start (``key``: ``[batch]`` keys), merged into
    ``prior``. With ``shrinking_eps`` the run is three runs at :math:`3\epsilon`,
    :math:`2\epsilon` and :math:`\epsilon`, each from the last one's highest-loss
    point; only the last one's outcome counts (and, with ``trace``, its trace).

    ``p.model`` is the model's structure as the loop calls it (for a randomised
    model, the structure of ``logits_fn(x, key)``)."""
    parts = dict(rho=rho, eot_samples=eot_samples, transform=transform, randomized=randomized)
    run = dict(targeted=targeted, loop=loop, loss_labels=loss_labels)
    if not shrinking_eps:
        attack = configuration(loss, norm=norm, early_stop=early_stop, trace=trace, **parts)  # type: ignore[arg-type]
        step_size = p.eps if norm == "l1" else 2.0 * p.eps
        out, _ = run_books(
            attack,
            p,
            attack.start(p, key),
            key=fold_rows(key, _GRAD),
            step_size=step_size,
            steps=steps,
            **run,  # type: ignore[arg-type]
        )
        return merge(prior, out)
    x_start = None
    for stage, (factor, n) in enumerate(zip((3.0, 2.0, 1.0), stage_steps(steps), strict=True)):
        last = factor == 1.0
        q = p._replace(eps=p.eps * factor)
        stage_key = fold_rows(key, stage) if stage else key
        attack = configuration(
            loss,
            norm="l1",
            early_stop=early_stop and last,
            warm_start=x_start is not None,
            trace=trace and last,
            **parts,  # type: ignore[arg-type]
        )
        x0 = (
            attack.start(q, stage_key) if x_start is None else project_l1_box(x_start, q.x, q.eps, q.lo, q.hi)
        )
        out, best = run_books(
            attack,
            q,
            x0,
            key=fold_rows(stage_key, _GRAD),
            step_size=q.eps,
            steps=n,
            **run,  # type: ignore[arg-type]
        )
        x_start = best.x
    return merge(prior, out)


def _check_common(
    norm: Norm,
    rho: float,
    num_restarts: int,
    key: PRNGKey,
    eot_samples: int,
    shrinking_eps: bool,
    steps: int,
) -> tuple[Norm, int]:
    """Static checks shared by both APGD variants; returns the canonical norm and ``steps``."""
    norm = check_norm(norm)
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    check_steps(num_restarts, "num_restarts")
    steps = check_steps(steps)
    if key is None:
        raise ValueError("key is required for the random starts (pass key=jax.random.key(0))")
    check_key(key, per_example=True)
    if not isinstance(eot_samples, (int, np.integer)) or isinstance(eot_samples, bool) or eot_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {eot_samples!r}")
    if shrinking_eps and norm != "l1":
        raise ValueError(f"shrinking_eps is part of the L1 version of APGD (norm='l1'), got norm={norm!r}")
    if shrinking_eps and steps < 3:
        raise ValueError(f"shrinking_eps splits the steps into three stages: steps must be >= 3, got {steps}")
    return norm, steps
