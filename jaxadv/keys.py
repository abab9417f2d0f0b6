r"""Per-example random keys: how every attack draws its random numbers.

Every random number an attack draws for an example comes from that example's
own key: its random start, its EOT draws and input transformations, its
finite-difference probes, its Square windows and signs, its restarts. A
row's draws therefore depend on its key alone, never on the other rows of the
batch, on its position in it or on the batch size, and an attack's result on
an example depends only on the example, its label and its key (given a model
whose arithmetic on a row does not depend on the batch either; see
``docs/numbers.md``). This is what lets :func:`jaxadv.evaluate` give the same
per-example results for any batch size and any number of devices.

An attack's ``key`` argument is either

* one PRNG key (``jax.random.key(0)``): row ``i`` of the batch then uses
  ``jax.random.fold_in(key, i)``, the keys of :func:`example_keys` for the
  indices ``0 .. batch - 1``; or
* a ``[batch]`` array of keys, one per example (``example_keys(key,
  indices)`` with each example's index in a dataset, as
  :func:`jaxadv.evaluate` passes them): used as they are.

Legacy raw keys (``jax.random.PRNGKey(0)``, uint32 ``[2]``, or ``[batch, 2]``)
are accepted too. Inside the library the keys of a batch travel as a
``[batch]`` typed key array; the helpers below fold, split and draw from them
row by row (``jax.vmap`` of the single-key operation), so that row ``i``'s
numbers are exactly those of the single-key call with ``keys[i]``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv.typing import Array, ArrayLike, PRNGKey

__all__ = ["draw_rows", "example_keys", "fold_rows", "per_row", "row_keys", "split_rows", "typed_key"]

_KEY_HINT = "pass key=jax.random.key(0), or a [batch] array of keys (one per example)"


def typed_key(key: Any, name: str = "key") -> Array:
    """``key`` (one key or an array of keys) as a typed key array: raw uint32 key
    data (``jax.random.PRNGKey(0)``) is wrapped with the default implementation.

    Raises:
      ValueError: ``None`` or something that is not a key (naming ``name``).
    """
    if key is None:
        raise ValueError(f"{name} is required: {_KEY_HINT}")
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    dtype = getattr(key, "dtype", None)
    if dtype is None or np.dtype(dtype) != np.uint32 or np.ndim(key) < 1:
        raise ValueError(f"{name} must be a PRNG key such as jax.random.key(0), got {key!r}: {_KEY_HINT}")
    try:
        return jax.random.wrap_key_data(jnp.asarray(key))
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{name} must be a PRNG key such as jax.random.key(0), got {key!r}: {_KEY_HINT}"
        ) from e


@functools.partial(jax.jit, static_argnums=1)
def _fold_range(key: Array, batch: int) -> Array:
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch, dtype=jnp.uint32))


def row_keys(key: PRNGKey | Array, batch: int, *, name: str = "key") -> Array:
    """The ``[batch]`` per-example keys an attack draws from (see the module docstring).

    Args:
      key: one PRNG key, or a ``[batch]`` array of keys (typed, or raw uint32
        ``[batch, 2]``); may be traced.
      batch: the number of examples (static).
      name: the argument's name in error messages.

    Returns:
      A ``[batch]`` typed key array: ``fold_in(key, i)`` for row ``i`` from one
      key, the keys themselves from a ``[batch]`` array.

    Raises:
      ValueError: ``None``, something that is not a key, or keys whose shape is
        neither ``()`` nor ``(batch,)``.
    """
    k = typed_key(key, name)
    if k.shape == ():
        return _fold_range(k, int(batch))
    if k.shape == (batch,):
        return k
    raise ValueError(
        f"{name} must be one PRNG key or a [batch] array of keys, one per example (batch={batch}); "
        f"got keys of shape {k.shape}"
    )


def example_keys(key: PRNGKey, indices: ArrayLike) -> Array:
    """``[n]`` keys ``jax.random.fold_in(key, indices[j])``: the key of each example by
    its index in a dataset.

    What :func:`jaxadv.evaluate` folds into its key for each example (then the
    attack's name). Passed as an attack's ``key``, they make each example's draws
    depend on its index alone, whatever batch it is in: the same for any batch
    size or device count.

    Args:
      key: one PRNG key.
      indices: ``[n]`` non-negative integers (e.g. ``np.arange(start, start + n)``).

    Returns:
      ``[n]`` typed key array.
    """
    k = typed_key(key, "key")
    if k.shape != ():
        raise ValueError(f"key must be one PRNG key, got keys of shape {k.shape}")
    idx = jnp.asarray(indices)
    if idx.ndim != 1 or not jnp.issubdtype(idx.dtype, jnp.integer):
        raise ValueError(f"indices must be a [n] integer array, got shape {idx.shape} and dtype {idx.dtype}")
    return jax.vmap(lambda i: jax.random.fold_in(k, i))(idx.astype(jnp.uint32))


def fold_rows(keys: Array, data: ArrayLike) -> Array:
    """``fold_in(keys[i], data)`` for every row: ``[batch]`` keys -> ``[batch]`` keys."""
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, data)


def split_rows(keys: Array, num: int = 2) -> tuple[Array, ...]:
    """``num`` independent ``[batch]`` key arrays: ``jax.random.split(keys[i], num)[j]`` in the ``j``-th."""
    parts = jax.vmap(lambda k: jax.random.split(k, num))(keys)
    return tuple(parts[:, j] for j in range(num))


def draw_rows(draw: Callable[[Array], Array], keys: Array) -> Array:
    """``draw(keys[i])`` stacked over the rows: ``[batch, *shape]`` from per-row draws.

    ``draw`` takes one key and returns one example's numbers, e.g.
    ``lambda k: jax.random.uniform(k, (n,))``.
    """
    return jax.vmap(draw)(keys)


def per_row(fn: Callable[[Array, Any], Array]) -> Callable[[Array, Array], Array]:
    """``fn(x, key) -> [batch, ...]`` (a randomised model, a random transformation) applied
    one example at a time: row ``i`` is ``fn(x[i:i+1], keys[i])[0]`` (one ``jax.vmap``,
    so the work stays batched), and its draws depend on its key alone."""

    def call(x: Array, keys: Array) -> Array:
        return jax.vmap(lambda xi, ki: fn(xi[None], ki)[0])(x, keys)

    return call
