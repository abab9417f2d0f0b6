"""Input preparation shared by every attack: checks, dtypes, labels, bounds.

:func:`prepare` turns the public arguments of an attack into a :class:`Problem`
of float32 arrays plus the model split into its static structure and traced
parameters; :meth:`Problem.finalize` casts the result back to the dtype of
``x``. New attacks start from here so that they all accept the same inputs and
reject bad ones with the same errors.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv.models import ModelStatic, combine_model, predict, split_model
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn
from jaxadv.validation import (
    check_batch_array,
    check_in_bounds,
    check_inputs,
    check_nonnegative,
    value_check,
)


class Problem(NamedTuple):
    """Normalised attack inputs.

    Attributes:
      model: hashable model structure (static).
      params: the model's array leaves (traced).
      x: ``[batch, ...]`` clean inputs, float32.
      labels: ``[batch]`` int32 labels, or ``[batch, C]`` float32 one-hot/soft.
      lo, hi: float32 bounds, broadcasting against ``x``.
      eps: float32 scalar or ``[batch]`` (0 when the attack has no eps).
      dtype: dtype of the caller's ``x`` (the result is cast back to it).
      num_classes: number of logits.
    """

    model: ModelStatic
    params: list[Any]
    x: Array
    labels: Array
    lo: Array
    hi: Array
    eps: Array
    dtype: Any
    num_classes: int

    def logits_fn(self) -> LogitsFn:
        return combine_model(self.model, self.params)

    def finalize(self, x_adv: Array) -> Array:
        """Cast to the caller's dtype and clip into the bounds in that dtype.

        Bounds that the dtype cannot represent are rounded inward, so that the
        result lies inside the float32 ``[lo, hi]`` exactly (``x`` does too).
        """
        out = x_adv.astype(self.dtype)
        lo, hi = self.lo.astype(self.dtype), self.hi.astype(self.dtype)
        lo = jnp.where(
            lo.astype(jnp.float32) < self.lo, jnp.nextafter(lo, jnp.asarray(jnp.inf, lo.dtype)), lo
        )
        hi = jnp.where(
            hi.astype(jnp.float32) > self.hi, jnp.nextafter(hi, jnp.asarray(-jnp.inf, hi.dtype)), hi
        )
        return jnp.clip(out, lo, hi)


def _aval(a: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a))


@functools.lru_cache(maxsize=256)
def _logits_aval(model: ModelStatic, param_avals: tuple[Any, ...], x_aval: Any) -> Any:
    return jax.eval_shape(lambda p, x: combine_model(model, list(p))(x), param_avals, x_aval)


def output_shape(model: ModelStatic, params: list[Any], x: Array) -> tuple[int, ...]:
    """Shape of ``logits_fn(x)``, traced once per model structure and input shape."""
    return tuple(_logits_aval(model, tuple(_aval(p) for p in params), _aval(x)).shape)


def prepare(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None,
    *,
    bounds: Bounds,
    targeted: bool = False,
    eps: ArrayLike | None = None,
) -> Problem:
    """Check and normalise an attack's inputs (see the module docstring).

    Raises ``ValueError`` (naming the argument) for: non-float or batch-less
    ``x``; ``bounds`` that do not broadcast against ``x`` or with ``lo > hi``;
    logits that are not ``[batch, C]``; labels of the wrong shape or outside
    ``[0, C)``; a targeted attack without targets; ``eps < 0``; and, when values
    are concrete, ``x`` outside ``bounds``.
    """
    x = check_inputs(x)
    dtype = x.dtype
    x32 = x.astype(jnp.float32)
    model, params = split_model(logits_fn)

    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise ValueError(f"bounds must be a pair (lo, hi), got {bounds!r}")
    lo = jnp.asarray(bounds[0], jnp.float32)
    hi = jnp.asarray(bounds[1], jnp.float32)
    for name, b in (("bounds[0]", lo), ("bounds[1]", hi)):
        try:
            shape = np.broadcast_shapes(b.shape, x.shape)
        except ValueError:
            shape = None
        if shape != x.shape:
            raise ValueError(f"{name} of shape {b.shape} does not broadcast against x of shape {x.shape}")
    value_check(jnp.all(lo <= hi), "bounds must satisfy lo <= hi")

    out = output_shape(model, params, x32)
    if len(out) != 2 or out[0] != x.shape[0]:
        raise ValueError(
            f"logits_fn must return logits of shape [batch, num_classes]=({x.shape[0]}, C), got {out}"
        )
    num_classes = out[1]

    if y is None:
        if targeted:
            raise ValueError("y is required for a targeted attack: pass the target classes")
        labels = predict(combine_model(model, params), x32).astype(jnp.int32)
    else:
        labels = jnp.asarray(y)
        if jnp.issubdtype(labels.dtype, jnp.integer):
            if labels.shape != (x.shape[0],):
                raise ValueError(
                    f"y must have shape [batch]=({x.shape[0]},) (integer labels) or "
                    f"[batch, num_classes] (one-hot), got {labels.shape}"
                )
            value_check(
                jnp.all((labels >= 0) & (labels < num_classes)),
                f"y must hold labels in [0, {num_classes}), found values in [{{lmin}}, {{lmax}}]",
                lmin=jnp.min(labels),
                lmax=jnp.max(labels),
            )
            labels = labels.astype(jnp.int32)
        elif jnp.issubdtype(labels.dtype, jnp.floating) or labels.dtype == jnp.bool_:
            if labels.shape != (x.shape[0], num_classes):
                raise ValueError(
                    f"one-hot y must have shape [batch, num_classes]=({x.shape[0]}, {num_classes}), "
                    f"got {labels.shape}"
                )
            labels = labels.astype(jnp.float32)
        else:
            raise ValueError(f"y must hold integer labels or one-hot floats, got dtype {labels.dtype}")

    eps_arr = jnp.zeros((), jnp.float32) if eps is None else check_nonnegative(eps, "eps")
    eps_arr = check_batch_array(eps_arr, x, "eps")
    check_in_bounds(x32, lo, hi)
    return Problem(model, params, x32, labels, lo, hi, eps_arr, dtype, num_classes)


def check_step_size(step_size: ArrayLike, x: Array, name: str = "step_size") -> Array:
    """A non-negative scalar or ``[batch]`` float32 step size."""
    return check_batch_array(check_nonnegative(step_size, name), x, name)
