r"""Step-size parts: how far each step goes, and where it starts from.

A step-size part is the third slot of an :class:`~jaxadv.compose.Attack`, beside
the gradient source and the update rule. It has ``init(step_size, steps)``, the
per-example state at the start, and ``update(state, t, objective, best)``, which
sees the objective :math:`L(x_t)` of each evaluated iterate (the loss, negated for
a targeted attack; ``-inf`` where it is not finite) and the best objective so
far, and returns the new state and a ``[batch]`` mask: the examples whose step
restarts from the best iterate. The state's ``eta`` is the step size.

* :func:`fixed`: the step size given to the attack, every step; never restarts
  (FGSM, BIM, PGD, MI-FGSM).
* :func:`checkpoint_halving`: APGD's schedule (Croce & Hein, 2020). At the
  checkpoints of :func:`checkpoint_schedule` the step :math:`\eta` is halved and
  the iterate goes back to the best point found when, since the last
  checkpoint, the objective rose in at most a fraction :math:`\rho` of the
  steps, or the best objective did not improve while the step had not just been
  halved. APGD's L-inf and L2 loops use it; in a composed attack it turns PGD's
  fixed step into APGD's adaptive one.

The states are NamedTuples of arrays, so a schedule runs inside ``jit``, ``vmap``
and the loop's carry; hyperparameters (``rho``) are traced leaves.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxadv.compose.sources import _pytree
from jaxadv.typing import Array
from jaxadv.validation import check_finite

__all__ = [
    "CheckpointHalving",
    "Fixed",
    "HalvingState",
    "checkpoint_halving",
    "checkpoint_schedule",
    "fixed",
]


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


class FixedState(NamedTuple):
    """``eta``: ``[batch]`` the step size."""

    eta: Array


@_pytree(data=(), meta=())
@dataclasses.dataclass(frozen=True)
class Fixed:
    """The given step size at every step; never restarts."""

    def check(self) -> None:
        """Nothing to check."""

    def init(self, step_size: Array, steps: int) -> FixedState:
        del steps
        return FixedState(step_size)

    def update(self, state: FixedState, t: Array, objective: Array, best: Array) -> tuple[FixedState, Array]:
        del t, best
        return state, jnp.zeros(objective.shape, bool)


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

    ``update(state, t, objective, best)`` takes ``t``, the index of the step that
    produced the iterate (``-1`` for the starting point, whose objective only
    initialises the books), and the best objective so far including it. At a
    checkpoint :math:`t` with window :math:`w`, the step halves where
    :math:`\#\{\text{rises}\} \le \rho w` or (the last checkpoint did not halve and
    the best objective did not improve since it).
    """

    rho: Any = 0.75

    def check(self) -> None:
        """Refuse a ``rho`` that is not a finite number in ``[0, 1]``."""
        check_finite(self.rho, "rho", minimum=0.0, maximum=1.0)

    def init(self, step_size: Array, steps: int) -> HalvingState:
        is_check, window = checkpoint_schedule(steps)
        eta = jnp.asarray(step_size, jnp.float32)
        zero = jnp.zeros(eta.shape, jnp.float32)
        return HalvingState(
            eta, zero, zero, zero, jnp.ones(eta.shape, bool), jnp.asarray(is_check), jnp.asarray(window)
        )

    def update(
        self, state: HalvingState, t: Array, objective: Array, best: Array
    ) -> tuple[HalvingState, Array]:
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


def fixed() -> Fixed:
    """The given step size at every step (the default of :class:`~jaxadv.compose.Attack`)."""
    return Fixed()


def checkpoint_halving(rho: Any = 0.75) -> CheckpointHalving:
    """APGD's step-size schedule: halve at checkpoints and restart from the best point
    (:class:`CheckpointHalving`); ``rho``: the fraction of rising steps below which a
    window counts as stalled (0.75 in APGD)."""
    return CheckpointHalving(rho)
