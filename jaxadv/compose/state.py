"""The state and the operands of the composed loop (:mod:`jaxadv.compose.loop`):
what one step reads and writes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from jaxadv.compose.bookkeeping import Best, BestLoss, QueryCount, Trace
from jaxadv.typing import Array

if TYPE_CHECKING:
    from jaxadv.compose.loop import Attack

__all__ = ["LoopState", "Operands", "Static"]


class LoopState(NamedTuple):
    """``x``: current iterate; ``rule``: the update rule's state; ``best``: the
    bookkeeping record (``None`` without ``keep_best``); ``tally``: the query
    count (``None`` without ``count_queries``); ``schedule``: the step-size part's
    state and ``best_loss`` the highest-loss iterate (``None`` with a fixed step);
    ``trace`` the per-example record of ``Attack(trace=True)``."""

    x: Array
    rule: Any
    best: Best | None
    tally: QueryCount | None = None
    schedule: Any = None
    best_loss: BestLoss | None = None
    trace: Trace | None = None


class Operands(NamedTuple):
    """Loop-invariant arrays (traced): the model's parameters, the clean batch and
    its labels, the box, the radius, the step size, the key, the attack's parts
    and the labels its loss is given."""

    params: Any
    x: Array
    labels: Array
    lo: Array
    hi: Array
    eps: Array
    step_size: Array
    key: Array  # [batch] keys, one per example
    attack: Attack
    loss_labels: Array | None = None  # what the source's loss is given, if not the labels (APGD-T)

    @property
    def source_labels(self) -> Array:
        """What the gradient source's loss is given: ``loss_labels``, else the labels."""
        return self.labels if self.loss_labels is None else self.loss_labels


class Static(NamedTuple):
    """Hashable configuration: the model's structure, ``targeted``, the caller's dtype."""

    model: Any
    targeted: bool
    dtype: Any
