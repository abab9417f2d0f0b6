"""Bookkeeping: the best adversarial iterate per example, and per-example early stop.

Success is :func:`jaxadv.success.hits` on the model's logits at an iterate
rounded to the caller's dtype (:func:`jaxadv.success.as_returned`), so it
agrees with re-predicting the returned array. An attack that keeps the best
iterate returns its last iterate when that is adversarial, otherwise the last
adversarial iterate it saw, otherwise the last iterate: a later step never
loses a success.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from jaxadv.losses import finite_rows
from jaxadv.success import hits
from jaxadv.threat_models import per_example
from jaxadv.typing import Array

__all__ = ["Best", "init_best", "record", "select"]


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
    return Best(jnp.where(per_example(hit, x_t) > 0, x_t, best.x_adv), best.found | hit), hit


def select(best: Best, x_t: Array, logits: Array, x: Array, labels: Array, targeted: bool) -> Array:
    """The example to return: ``x_t`` if adversarial, else the recorded one, else
    ``x_t``; ``x`` where the model is not finite at ``x_t``."""
    hit = hits(logits, labels, targeted)
    out = jnp.where(per_example(finite_rows(logits), x) > 0, x_t, x)
    return jnp.where(per_example(~hit & best.found, x_t) > 0, best.x_adv, out)
