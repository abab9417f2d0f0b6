"""Type aliases shared by the whole library."""

from __future__ import annotations

from typing import Any, Callable, Literal

import jax
import jax.typing

Array = jax.Array
#: Anything ``jnp.asarray`` accepts: a JAX or NumPy array or a Python scalar.
ArrayLike = jax.typing.ArrayLike
#: A model as the attacks see it: ``logits_fn(x) -> logits`` with ``x`` of shape
#: ``[batch, ...]`` and logits of shape ``[batch, num_classes]``.
LogitsFn = Callable[[Array], Array]
#: A per-example loss: ``loss(logits [batch, C], onehot [batch, C]) -> [batch]``.
LossFn = Callable[[Array, Array], Array]
#: Threat models: the norm that measures a perturbation.
Norm = Literal["linf", "l2", "l1"]
#: ``(lo, hi)``; each a scalar or an array that broadcasts against ``x``.
Bounds = tuple[ArrayLike, ArrayLike]
PRNGKey = Any
#: How an iterative attack runs its loop (see :func:`jaxadv.engine.iterate`).
LoopMode = Literal["auto", "fori", "host"]

NORMS: tuple[str, ...] = ("linf", "l2", "l1")
