"""Choosing target classes for targeted attacks."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxadv.keys import draw_rows, row_keys
from jaxadv.models import logits
from jaxadv.typing import Array, ArrayLike, LogitsFn, PRNGKey


def least_likely(logits_fn: LogitsFn, x: ArrayLike) -> Array:
    r"""The least-likely class :math:`\arg\min_c f(x)_c` per example, shape ``[batch]``.

    With a targeted :func:`jaxadv.bim` this is the iterative least-likely-class
    method (Kurakin et al., 2017): the hardest target for the model.
    """
    return jnp.argmin(logits(logits_fn, jnp.asarray(x)), axis=-1).astype(jnp.int32)


def random_targets(key: PRNGKey, y: ArrayLike, num_classes: int) -> Array:
    """A uniformly random class different from ``y`` per example, shape ``[batch]``.

    ``key``: one key (row ``i`` draws from ``fold_in(key, i)``) or a ``[batch]``
    array of keys, one per example (:mod:`jaxadv.keys`)."""
    y = jnp.asarray(y)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if y.ndim != 1:
        raise ValueError(f"y must be [batch] integer labels, got shape {y.shape}")
    keys = row_keys(key, y.shape[0])
    shift = draw_rows(lambda k: jax.random.randint(k, (), 1, num_classes), keys)
    return ((y + shift) % num_classes).astype(jnp.int32)
