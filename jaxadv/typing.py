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
#: Threat models: the norm that measures a perturbation. The canonical names are
#: ``"linf"``, ``"l2"`` and ``"l1"``; any capitalisation, and ``"inf"`` for
#: ``"linf"``, is accepted (see :func:`jaxadv.validation.check_norm`).
Norm = Literal["linf", "l2", "l1", "Linf", "LINF", "L2", "L1", "inf"]
#: ``(lo, hi)``; each a scalar or an array that broadcasts against ``x``.
Bounds = tuple[ArrayLike, ArrayLike]
PRNGKey = Any
#: How an iterative attack runs its loop (see :func:`jaxadv.engine.iterate`).
LoopMode = Literal["auto", "fori", "compiled", "host"]

NORMS: tuple[str, ...] = ("linf", "l2", "l1")
