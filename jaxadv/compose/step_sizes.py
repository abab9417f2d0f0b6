r"""Step-size parts: how far each step goes, and where it starts from.

A step-size part is the third slot of an :class:`~jaxadv.compose.Attack`, beside
the gradient source and the update rule. It has ``init(step_size, steps, *,
start, x)``, the per-example state at the start, and ``update(state, progress)``,
which sees a :class:`Progress` after each evaluated iterate: the objective
:math:`L(x_t)` (the loss, negated for a targeted attack; ``-inf`` where it is
not finite), the highest-objective iterate so far, the clean batch and the
radius. It returns the new state and a ``[batch]`` mask: the examples whose
step restarts from the best iterate. The state's ``eta`` is the step size; a
state with an ``l1_sparsity`` field also sets the fraction of coordinates an
L1 step moves.

* :func:`fixed`: the step size given to the attack, every step; never restarts
  (FGSM, BIM, PGD, MI-FGSM).
* :func:`checkpoint_halving`: APGD's schedule (Croce & Hein, 2020). At the
  checkpoints of :func:`checkpoint_schedule` the step :math:`\eta` is halved and
  the iterate goes back to the best point found when, since the last
  checkpoint, the objective rose in at most a fraction :math:`\rho` of the
  steps, or the best objective did not improve while the step had not just been
  halved. With the :class:`~jaxadv.compose.HeavyBall` rule it makes APGD in
  L-inf and L2 (:func:`jaxadv.apgd` is that configuration); with a fixed-step
  rule it turns PGD's step into an adaptive one.
* :func:`sparsity_checkpoints`: L1-APGD's schedule (Croce & Hein, 2021). Every
  ``max(int(0.04 N), 1)`` steps, with :math:`s = \|x_{best} - x\|_0`: the
  fraction of coordinates a step moves becomes :math:`s / (1.5 n)`; if
  :math:`s` fell below 0.95 times its value at the last checkpoint the step
  goes back to :math:`\epsilon` and the iterate to the best point, otherwise
  the step is divided by 1.5; it stays in :math:`[\epsilon/10, \epsilon]`.
  With :class:`~jaxadv.compose.SparseSteepest` it makes L1-APGD.

The states are NamedTuples of arrays, so a schedule runs inside ``jit``, ``vmap``
and the loop's carry; hyperparameters (``rho``) are traced leaves.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxadv._core.rows import count_changed
from jaxadv.compose.bookkeeping import BestLoss
from jaxadv.compose.sources import _pytree
from jaxadv.typing import Array
from jaxadv.validation import check_finite

__all__ = [
    "CheckpointHalving",
    "Fixed",
    "HalvingState",
    "Progress",
    "SparsityCheckpoints",
    "SparsityState",
    "checkpoint_halving",
    "checkpoint_schedule",
    "fixed",
    "l1_checkpoint_schedule",
    "sparsity_checkpoints",
]


class Progress(NamedTuple):
    """What a step-size part sees after each evaluated iterate.

    Attributes:
      t: the index of the step that produced the iterate (``-1`` for the
        starting point, whose objective only initialises the books).
      objective: ``[batch]`` the objective at the iterate.
      best: the highest-objective iterate so far, this one included.
      x: ``[batch, ...]`` the clean batch.
      eps: scalar or ``[batch]`` the radius.
    """

    t: Array
    objective: Array
    best: BestLoss
    x: Array
    eps: Array


def checkpoint_schedule(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Which iterations (0-based) end a checkpoint window, and that window's length.

    Windows of ``max(int(0.22 N), 1)`` steps, each next one ``max(int(0.03 N), 1)``
    shorter, never shorter than ``max(int(0.06 N), 1)``: the checkpoints
    :math:`p_{j+1} = p_j + \\max(p_j - p_{j-1} - 0.03, 0.06)` of the APGD paper.
    """
    k = max(int(0.22 * steps), 1)
    shrink = max(int(0.03 * steps), 1)
    k_min = max(int(0.06 * steps), 1)
    is_check = np.zeros(steps, bool)
    window = np.ones(steps, np.float32)
    count = 0
    for i in range(steps):
        count += 1
        if count == k:
            is_check[i], window[i] = True, k
            k = max(k - shrink, k_min)
            count = 0
    return is_check, window


def l1_checkpoint_schedule(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The checkpoints of L1-APGD: every ``max(int(0.04 N), 1)`` iterations (same
    return format as :func:`checkpoint_schedule`)."""
    k = max(int(0.04 * steps), 1)
    is_check = (np.arange(steps) + 1) % k == 0
    return is_check, np.where(is_check, np.float32(k), np.float32(1.0)).astype(np.float32)


class FixedState(NamedTuple):
    """``eta``: ``[batch]`` the step size."""

    eta: Array


@_pytree(data=(), meta=())
@dataclasses.dataclass(frozen=True)
class Fixed:
    """The given step size at every step; never restarts."""

    def check(self) -> None:
        """Nothing to check."""

    def init(
        self, step_size: Array, steps: int, *, start: Array | None = None, x: Array | None = None
    ) -> FixedState:
        del steps, start, x
        return FixedState(step_size)

    def update(self, state: FixedState, progress: Progress) -> tuple[FixedState, Array]:
        return state, jnp.zeros(progress.objective.shape, bool)


class HalvingState(NamedTuple):
    """The state of :class:`CheckpointHalving`, per example (``[batch]``) unless said.

    Attributes:
      eta: the step size.
      increases: steps since the last checkpoint at which the objective rose.
      previous: the objective of the previous iterate.
      best_at_check: the best objective at the last checkpoint.
      halved_at_check: bool, the step was halved at the last checkpoint.
      is_check: ``[steps]`` bool, the checkpoints (:func:`checkpoint_schedule`).
      window: ``[steps]`` the length of the window each checkpoint ends.
    """

    eta: Array
    increases: Array
    previous: Array
    best_at_check: Array
    halved_at_check: Array
    is_check: Array
    window: Array


@_pytree(data=("rho",), meta=())
@dataclasses.dataclass(frozen=True)
class CheckpointHalving:
    r"""APGD's step-size schedule with its restart from the best point (module docstring).

    ``update(state, progress)`` reads the :class:`Progress`'s ``t``, objective
    and best objective. At a
    checkpoint :math:`t` with window :math:`w`, the step halves where
    :math:`\#\{\text{rises}\} \le \rho w` or (the last checkpoint did not halve and
    the best objective did not improve since it).
    """

    rho: Any = 0.75

    def check(self) -> None:
        """Refuse a ``rho`` that is not a finite number in ``[0, 1]``."""
        check_finite(self.rho, "rho", minimum=0.0, maximum=1.0)

    def init(
        self, step_size: Array, steps: int, *, start: Array | None = None, x: Array | None = None
    ) -> HalvingState:
        del start, x
        is_check, window = checkpoint_schedule(steps)
        eta = jnp.asarray(step_size, jnp.float32)
        zero = jnp.zeros(eta.shape, jnp.float32)
        return HalvingState(
            eta, zero, zero, zero, jnp.ones(eta.shape, bool), jnp.asarray(is_check), jnp.asarray(window)
        )

    def update(self, state: HalvingState, progress: Progress) -> tuple[HalvingState, Array]:
        t, objective, best = progress.t, progress.objective, progress.best.objective
        first = t < 0
        ti = jnp.maximum(t, 0)
        increases = state.increases + (objective > state.previous).astype(jnp.float32)
        at_check = state.is_check[ti] & ~first
        few_increases = increases <= state.window[ti] * self.rho
        stalled = ~state.halved_at_check & (state.best_at_check >= best)
        halve = at_check & (few_increases | stalled)
        new = HalvingState(
            eta=jnp.where(halve, 0.5 * state.eta, state.eta),
            increases=jnp.where(at_check | first, 0.0, increases),
            previous=objective,
            best_at_check=jnp.where(at_check | first, best, state.best_at_check),
            halved_at_check=jnp.where(at_check, halve, state.halved_at_check | first),
            is_check=state.is_check,
            window=state.window,
        )
        return new, halve


class SparsityState(NamedTuple):
    """The state of :class:`SparsityCheckpoints`, per example (``[batch]``) unless said.

    Attributes:
      eta: the step size.
      l1_sparsity: the fraction of coordinates a step moves (read by the rule).
      sparsity_at_check: :math:`\\|x_{best} - x\\|_0` at the last checkpoint.
      is_check: ``[steps]`` bool, the checkpoints (:func:`l1_checkpoint_schedule`).
    """

    eta: Array
    l1_sparsity: Array
    sparsity_at_check: Array
    is_check: Array


@_pytree(data=(), meta=("warm_start",))
@dataclasses.dataclass(frozen=True)
class SparsityCheckpoints:
    r"""L1-APGD's step size and step sparsity (module docstring), with its restart
    from the best point when that point became sparser.

    The step starts at the given size (:math:`\epsilon` in L1-APGD) moving the
    top 20% of coordinates, with the reference sparsity :math:`n`; with
    ``warm_start`` (a run that continues from an earlier run's point, as the
    stages of ``shrinking_eps`` do) the fraction and the reference come from
    the start's own sparsity :math:`s_0`: :math:`s_0 / (1.5 n)` and :math:`s_0`.
    """

    warm_start: bool = False

    def check(self) -> None:
        """Nothing to check (no array hyperparameter)."""

    def init(
        self, step_size: Array, steps: int, *, start: Array | None = None, x: Array | None = None
    ) -> SparsityState:
        if start is None or x is None:
            raise ValueError("SparsityCheckpoints.init needs the start point and the clean batch")
        is_check, _ = l1_checkpoint_schedule(steps)
        eta = jnp.asarray(step_size, jnp.float32)
        n = math.prod(x.shape[1:])
        if self.warm_start:
            sparsity = count_changed(start, x)
            fraction = sparsity / n / 1.5
        else:
            fraction = jnp.full(eta.shape, 0.2, jnp.float32)
            sparsity = jnp.full(eta.shape, n, jnp.float32)
        return SparsityState(eta, fraction, sparsity, jnp.asarray(is_check))

    def update(self, state: SparsityState, progress: Progress) -> tuple[SparsityState, Array]:
        t = progress.t
        at_check = state.is_check[jnp.maximum(t, 0)] & (t >= 0)
        sparsity = count_changed(progress.best.x, progress.x)
        # The best point got sparser: full steps again, from there.
        sparser = at_check & (sparsity / state.sparsity_at_check < 0.95)
        eps = jnp.broadcast_to(jnp.asarray(progress.eps, jnp.float32), state.eta.shape)
        eta = jnp.clip(jnp.where(sparser, eps, state.eta / 1.5), eps / 10.0, eps)
        n = math.prod(progress.x.shape[1:])
        new = SparsityState(
            eta=jnp.where(at_check, eta, state.eta),
            l1_sparsity=jnp.where(at_check, sparsity / n / 1.5, state.l1_sparsity),
            sparsity_at_check=jnp.where(at_check, sparsity, state.sparsity_at_check),
            is_check=state.is_check,
        )
        return new, sparser


def fixed() -> Fixed:
    """The given step size at every step (the default of :class:`~jaxadv.compose.Attack`)."""
    return Fixed()


def checkpoint_halving(rho: Any = 0.75) -> CheckpointHalving:
    """APGD's step-size schedule: halve at checkpoints and restart from the best point
    (:class:`CheckpointHalving`); ``rho``: the fraction of rising steps below which a
    window counts as stalled (0.75 in APGD)."""
    return CheckpointHalving(rho)


def sparsity_checkpoints(*, warm_start: bool = False) -> SparsityCheckpoints:
    """L1-APGD's schedule (:class:`SparsityCheckpoints`)."""
    return SparsityCheckpoints(warm_start)
