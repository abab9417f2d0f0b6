"""Randomised models seen through fixed keys, for the input checks and the books.

A randomised model is called as ``logits_fn(x, key)`` (dropout left on, a
randomised defence). An attack on it needs two views of the model: a
deterministic one, one fixed draw per example, for the input checks, the clean
labels and the success of the returned batch (:func:`fix_key`,
:func:`prepare_problem`); and the model itself, called by the loop with keys of
its own (:func:`loop_problem`, :func:`source_model`). Deterministic models pass
through unchanged.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

from jaxadv._core.problem import Problem, prepare
from jaxadv.keys import per_row, row_keys
from jaxadv.models import ModelStatic, combine_model
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, PRNGKey

# The key of the model's own draw when a randomised model is evaluated for
# bookkeeping (independent of the keys the gradient source folds in).
EVAL_FOLD = 0xE7A1


class _FixedKey:
    """A randomised model seen as a deterministic one: fixed keys, one per example
    (``[batch]`` keys, or one key standing for ``fold_in(key, i)`` per row), the model
    called one example at a time (:func:`jaxadv.keys.per_row`)."""

    def __init__(self, fn: Any, key: PRNGKey) -> None:
        self.fn, self.key = fn, key

    def __call__(self, x: Array) -> Array:
        return per_row(self.fn)(x, row_keys(self.key, x.shape[0]))


jax.tree_util.register_pytree_node(
    _FixedKey, lambda m: ((m.fn, m.key), None), lambda _, c: _FixedKey(c[0], c[1])
)


def fix_key(logits_fn: Any, key: PRNGKey) -> LogitsFn:
    """A randomised model ``logits_fn(x, key) -> logits`` seen as the deterministic
    model of one draw per example: row ``i`` of a batch gets
    ``logits_fn(x[i:i+1], key_i)``, ``key_i`` the ``i``-th of ``[batch]`` keys, or
    ``fold_in(key, i)`` for one key (:func:`jaxadv.keys.row_keys`). The keys are a
    traced leaf of the result: new keys reuse the compiled programs."""
    return _FixedKey(logits_fn, key)


def prepare_problem(
    logits_fn: Any,
    x: ArrayLike,
    y: ArrayLike | None,
    *,
    key: PRNGKey,
    randomized: bool,
    bounds: Bounds,
    targeted: bool,
    eps: ArrayLike | None,
) -> Problem:
    """:func:`jaxadv.attacks.base.prepare`, with a randomised model ``logits_fn(x, key)``
    seen through fixed per-example keys derived from ``key`` (:func:`fix_key`; for the
    input checks, the clean labels and the success of the returned batch)."""
    model = logits_fn
    if randomized:
        batch = int(np.shape(x)[0]) if np.ndim(x) else 0
        # An empty batch's output shape is probed on one example (see prepare).
        model = _FixedKey(logits_fn, row_keys(key, max(batch, 1)) if np.ndim(x) else key)
    return prepare(model, x, y, bounds=bounds, targeted=targeted, eps=eps)


def loop_problem(p: Problem, randomized: bool) -> Problem:
    """The problem whose model a loop calls with its own keys (``p`` itself for a
    deterministic model); see :func:`source_model`."""
    return p._replace(model=_unfix(p.model)) if randomized else p


def _unfix(model: ModelStatic) -> ModelStatic:
    """The structure of the wrapped randomised model inside a ``_FixedKey``'s."""
    return _UnfixedModel(model)  # type: ignore[return-value]


class _UnfixedModel(NamedTuple):
    inner: ModelStatic


def source_model(model: Any, params: Any, randomized: bool) -> Any:
    """``model(x, keys) -> logits`` for the sources, ``keys`` one per row of ``x``: a
    randomised model is called one example at a time with its key
    (:func:`jaxadv.keys.per_row`); a deterministic one ignores the keys."""
    if randomized:
        fixed = combine_model(model.inner, params)
        return per_row(fixed.fn)  # type: ignore[attr-defined]
    f = combine_model(model, params)
    return lambda xi, _keys: f(xi)
