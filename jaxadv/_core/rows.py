"""Per-example (row) helpers: broadcasting a per-example value, selecting rows, flattening.

Every batch in jaxadv is ``[batch, ...]``: row ``b`` is example ``b``. An
attack's state advances example by example, so its loops keep choosing, per
example, between a new value and an old one (a step is taken or refused, an
example is frozen once adversarial, a best-so-far record is replaced). These
are the helpers every layer uses for that, so that the choice is written once.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import jax
import jax.numpy as jnp

from jaxadv.typing import Array, ArrayLike

T = TypeVar("T")


def per_example(value: ArrayLike, x: Array) -> Array:
    """Reshape a scalar or a ``[batch]`` array so that it broadcasts against ``x``."""
    value = jnp.asarray(value, jnp.float32)
    if value.ndim == 0:
        return value
    return value.reshape(value.shape + (1,) * (x.ndim - value.ndim))


def select_rows(mask: ArrayLike, new: T, old: Any) -> T:
    """``new`` in the examples where ``mask`` holds, ``old`` in the others.

    ``mask`` is ``[batch]`` (bool, or numbers read as ``mask > 0``) or a scalar;
    ``new`` and ``old`` are arrays ``[batch, ...]`` or pytrees of them with the
    same structure (a leaf of ``old`` may be a scalar, e.g. ``0.0``). Leaf by
    leaf: :math:`\\text{out}_b = \\text{new}_b` if :math:`\\text{mask}_b > 0`,
    else :math:`\\text{old}_b`. A select, so exact: no arithmetic touches the
    values.
    """

    def pick(n: Any, o: Any) -> Array:
        ref = n if jnp.ndim(n) >= jnp.ndim(o) else o
        return jnp.where(per_example(mask, jnp.asarray(ref)) > 0, n, o)

    return jax.tree_util.tree_map(pick, new, old)  # type: ignore[no-any-return]


def flat(a: Array) -> Array:
    """``[batch, ...] -> [batch, n]``: each example as one row of its ``n`` entries."""
    return a.reshape(a.shape[0], math.prod(a.shape[1:]))


def count_changed(a: Array, b: ArrayLike = 0.0) -> Array:
    """``[batch]`` float32: the entries of each row of ``a`` that differ from ``b``
    (the L0 size of a perturbation ``a`` when ``b`` is 0, or of ``a - b``)."""
    return jnp.sum(flat(a != b), axis=1).astype(jnp.float32)
