"""Model adapters: turn Flax (linen or NNX) models and plain functions into
``logits_fn(x) -> logits`` callables that the attacks accept.

The adapters return :class:`jax.tree_util.Partial` objects: callables whose
parameters are pytree *leaves*. Attacks pass those leaves into their compiled
programs as traced arguments, so attacking with new parameters of the same
shapes reuses the compiled program instead of baking the parameters in as
constants. A plain closure ``lambda x: model.apply(variables, x)`` works too, but
its captured parameters become constants of the program (a new closure per call
means a new compilation); prefer an adapter.

Normalisation: pass ``mean``/``std`` to attack raw inputs (e.g. pixels in
``[0, 1]``) while the model sees ``(x - mean) / std``. ``eps`` and ``bounds`` are
then measured in the raw space, as everywhere in the library.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, Callable, Hashable

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv._core.compile import jit
from jaxadv.typing import Array, ArrayLike, LogitsFn

Partial = jax.tree_util.Partial


def _normalise(x: Array, mean: Array | None, std: Array | None) -> Array:
    if mean is not None:
        x = x - mean
    if std is not None:
        x = x / std
    return x


def _select(out: Any, output: Hashable | Callable[[Any], Array] | None) -> Array:
    if output is None:
        if isinstance(out, (tuple, list, dict)):
            raise ValueError(
                "the model returned several outputs "
                f"({type(out).__name__}); pass output= (an index, a key or a callable) "
                "to name the logits"
            )
        return out
    if callable(output):
        return output(out)
    return out[output]


def _as_array(value: ArrayLike | None) -> Array | None:
    return None if value is None else jnp.asarray(value, jnp.float32)


@dataclasses.dataclass(frozen=True)
class _LinenApply:
    model: Any
    method: Any
    output: Any
    kwargs: tuple[tuple[str, Any], ...]

    def __call__(self, variables: Any, mean: Array | None, std: Array | None, x: Array) -> Array:
        from flax import errors

        try:
            out = self.model.apply(
                variables,
                _normalise(x, mean, std),
                method=self.method,
                mutable=False,  # batch statistics are never updated by an attack
                **dict(self.kwargs),
            )
        except (
            errors.ApplyScopeInvalidVariablesTypeError,
            errors.ApplyScopeInvalidVariablesStructureError,
            errors.ScopeCollectionNotFound,
            errors.ScopeParamNotFoundError,
        ) as e:
            if isinstance(variables, Mapping) and "params" not in variables:
                raise ValueError(
                    "from_flax got variables without a 'params' collection (the model's parameters "
                    "alone, such as variables['params']?): pass the full variables dict "
                    "{'params': ..., 'batch_stats': ...} that model.init returned"
                ) from e
            raise
        return _select(out, self.output)


@dataclasses.dataclass(frozen=True)
class _NNXApply:
    graphdef: Any
    output: Any

    def __call__(self, state: Any, mean: Array | None, std: Array | None, x: Array) -> Array:
        from flax import nnx

        module = nnx.merge(self.graphdef, state)
        # Inference mode on a private copy: running statistics, no dropout.
        module = nnx.view(module, deterministic=True, use_running_average=True, raise_if_not_found=False)
        return _select(module(_normalise(x, mean, std)), self.output)


@dataclasses.dataclass(frozen=True)
class _ApplyFn:
    apply_fn: Callable[..., Any]
    output: Any

    def __call__(self, params: Any, mean: Array | None, std: Array | None, x: Array) -> Array:
        return _select(self.apply_fn(params, _normalise(x, mean, std)), self.output)


def from_flax(
    model: Any,
    variables: Any = None,
    *,
    mean: ArrayLike | None = None,
    std: ArrayLike | None = None,
    method: Any = None,
    output: Hashable | Callable[[Any], Array] | None = None,
    **apply_kwargs: Hashable,
) -> LogitsFn:
    r"""Adapt a Flax model to ``logits_fn(x) -> logits``.

    * Flax linen: ``from_flax(model, variables, train=False)`` calls
      ``model.apply(variables, (x - mean) / std, mutable=False, **apply_kwargs)``.
      Keyword arguments (``train=False``, ``deterministic=True``...) are forwarded;
      ``mutable=False`` guarantees that ``batch_stats`` are never updated (a model
      that tries to, e.g. batch norm in training mode, raises).
    * Flax NNX: ``from_flax(module)`` (no ``variables``) splits the module into its
      graph and state; each call merges a private copy in inference mode
      (``deterministic=True``, ``use_running_average=True``). The user's module
      is never mutated.

    Args:
      model: a ``flax.linen.Module`` or a ``flax.nnx.Module``.
      variables: the linen variables (``{"params": ..., "batch_stats": ...}``), the
        whole dict ``model.init`` returned: passing ``variables["params"]`` alone
        raises a ``ValueError`` saying so at the first call.
      mean, std: optional normalisation applied inside the model (scalars or
        arrays broadcasting against ``x``). ``eps`` stays in the raw space.
      method: linen ``method=`` to apply (default ``__call__``).
      output: when the model returns several outputs, which one is the logits:
        an index, a dict key, or a callable ``outputs -> logits``.
      **apply_kwargs: hashable keyword arguments forwarded to ``apply``.

    Returns:
      A callable pytree ``logits_fn(x [batch, ...]) -> [batch, num_classes]``
      whose leaves are the variables (traced by the attacks, not baked in).
    """
    from flax import nnx

    if isinstance(model, nnx.Module):
        if variables is not None or apply_kwargs or method is not None:
            raise ValueError("an NNX module carries its own state: pass no variables, method or kwargs")
        return from_nnx(model, mean=mean, std=std, output=output)
    if variables is None:
        raise ValueError("variables is required for a Flax linen model")
    fn = _LinenApply(model, method, output, tuple(sorted(apply_kwargs.items())))
    return Partial(fn, variables, _as_array(mean), _as_array(std))


def from_nnx(
    module: Any,
    *,
    mean: ArrayLike | None = None,
    std: ArrayLike | None = None,
    output: Hashable | Callable[[Any], Array] | None = None,
) -> LogitsFn:
    """Adapt a Flax NNX module (see :func:`from_flax`)."""
    from flax import nnx

    graphdef, state = nnx.split(module)
    return Partial(_NNXApply(graphdef, output), state, _as_array(mean), _as_array(std))


def from_apply(
    apply_fn: Callable[[Any, Array], Any],
    params: Any,
    *,
    mean: ArrayLike | None = None,
    std: ArrayLike | None = None,
    output: Hashable | Callable[[Any], Array] | None = None,
) -> LogitsFn:
    """Adapt a pure function ``apply_fn(params, x) -> logits`` and its parameters.

    ``apply_fn`` should be a module-level function (it is hashed to find the
    compiled program); ``params`` is any pytree of arrays.
    """
    return Partial(_ApplyFn(apply_fn, output), params, _as_array(mean), _as_array(std))


# --- static/dynamic split, so that parameters are traced arguments -----------


def _is_dynamic(leaf: Any) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic))


@dataclasses.dataclass(frozen=True)
class ModelStatic:
    """The hashable part of a model: tree structure and non-array leaves."""

    treedef: Any
    static_leaves: tuple[tuple[int, Any], ...]
    num_leaves: int


def split_model(logits_fn: Any) -> tuple[ModelStatic, list[Any]]:
    """Split a model into its hashable structure and its array leaves.

    An NNX module is adapted with :func:`from_nnx` first.
    """
    from flax import nnx

    if isinstance(logits_fn, nnx.Module):
        logits_fn = from_nnx(logits_fn)
    if not callable(logits_fn):
        raise ValueError(f"logits_fn must be callable, got {type(logits_fn).__name__}")
    leaves, treedef = jax.tree_util.tree_flatten(logits_fn)
    static = tuple((i, leaf) for i, leaf in enumerate(leaves) if not _is_dynamic(leaf))
    dynamic = [leaf for leaf in leaves if _is_dynamic(leaf)]
    try:
        hash(static)
    except TypeError as e:
        raise ValueError(
            "logits_fn holds an unhashable non-array value; wrap parameters with "
            "jaxadv.from_flax / from_apply"
        ) from e
    return ModelStatic(treedef, static, len(leaves)), dynamic


def combine_model(static: ModelStatic, dynamic: list[Any]) -> LogitsFn:
    """Inverse of :func:`split_model`."""
    fixed = dict(static.static_leaves)
    it = iter(dynamic)
    leaves = [fixed[i] if i in fixed else next(it) for i in range(static.num_leaves)]
    return jax.tree_util.tree_unflatten(static.treedef, leaves)


@functools.partial(jit, static_argnums=0)
def _logits(static: ModelStatic, dynamic: list[Any], x: Array) -> Array:
    return combine_model(static, dynamic)(x)


def logits(logits_fn: LogitsFn, x: ArrayLike) -> Array:
    """``logits_fn(x)``, compiled once per model structure (parameters traced)."""
    static, dynamic = split_model(logits_fn)
    return _logits(static, dynamic, jnp.asarray(x))


def predict(logits_fn: LogitsFn, x: ArrayLike) -> Array:
    """The model's predicted classes ``argmax logits_fn(x)``, shape ``[batch]``."""
    return jnp.argmax(logits(logits_fn, x), axis=-1)
