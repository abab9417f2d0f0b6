"""The problem every attack solves: its inputs checked and normalised.

:func:`prepare` turns the public arguments of an attack into a :class:`Problem`
of float32 arrays plus the model split into its static structure and traced
parameters; :meth:`Problem.finalize` casts the result back to the dtype of
``x``. New attacks start from here so that they all accept the same inputs and
reject bad ones with the same errors. The public home of these names is
:mod:`jaxadv.attacks.base`, which re-exports them.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv._core.compile import jit
from jaxadv.models import ModelStatic, combine_model, predict, split_model
from jaxadv.success import AttackResult, hits
from jaxadv.threat_models import cast_into_box
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn
from jaxadv.validation import (
    check_batch_array,
    check_in_bounds,
    check_inputs,
    check_labels,
    check_nonnegative,
    is_traced,
    value_check,
)


class Problem(NamedTuple):
    """Normalised attack inputs.

    Attributes:
      model: hashable model structure (static).
      params: the model's array leaves (traced).
      x: ``[batch, ...]`` clean inputs, float32.
      labels: ``[batch]`` int32 labels (one-hot ``y`` becomes its argmax), or
        ``[batch, C]`` float32 probabilities with ``prepare(..., soft_labels=True)``.
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

    @property
    def empty(self) -> bool:
        """Whether the batch has no examples (attacks then return ``x`` at once)."""
        return self.x.shape[0] == 0

    def finalize(self, x_adv: Array) -> Array:
        """Cast to the caller's dtype and clip into the bounds in that dtype
        (:func:`jaxadv.threat_models.cast_into_box`: bounds that the dtype cannot
        represent are rounded inward, so that the result lies inside the float32
        ``[lo, hi]`` exactly; ``x`` does too)."""
        return cast_into_box(x_adv, self.dtype, self.lo, self.hi)

    def output(
        self,
        x_adv: Array,
        *,
        targeted: bool,
        return_info: bool,
        queries: Array | None = None,
        trace: Any = None,
    ) -> Array | AttackResult:
        """What an attack returns: the finalised ``x_adv``, or with ``return_info`` the
        :class:`jaxadv.AttackResult` with success re-predicted on exactly that array."""
        if not return_info:
            return x_adv
        if self.empty:  # not re-predicted: a model may not trace zero examples
            return AttackResult(x_adv, jnp.zeros((0,), bool), queries, trace)
        success = _success(self.model, self.params, x_adv, self.labels, targeted=targeted)
        return AttackResult(x_adv, success, queries, trace)


@functools.partial(jit, static_argnames=("model", "targeted"))
def _success(model: ModelStatic, params: Any, x_adv: Array, labels: Array, *, targeted: bool) -> Array:
    """``[batch]`` whether the model's prediction at ``x_adv`` is a success, compiled
    (a model called eagerly runs one operation at a time)."""
    return hits(combine_model(model, params)(x_adv.astype(jnp.float32)), labels, targeted)


def _aval(a: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a))


@functools.lru_cache(maxsize=256)
def _logits_aval(model: ModelStatic, param_avals: tuple[Any, ...], x_aval: Any) -> Any:
    return jax.eval_shape(lambda p, x: combine_model(model, list(p))(x), param_avals, x_aval)


def output_shape(model: ModelStatic, params: list[Any], x: Array | jax.ShapeDtypeStruct) -> tuple[int, ...]:
    """Shape of ``logits_fn(x)``, traced once per model structure and input shape (``x``
    an array, or only its shape and dtype)."""
    return tuple(_logits_aval(model, tuple(_aval(p) for p in params), _aval(x)).shape)


def prepare(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None,
    *,
    bounds: Bounds,
    targeted: bool = False,
    eps: ArrayLike | None = None,
    soft_labels: bool = False,
) -> Problem:
    """Check and normalise an attack's inputs (see the module docstring).

    Raises ``ValueError`` (naming the argument) for: non-float or batch-less
    ``x``; ``bounds`` that do not broadcast against ``x`` or with ``lo > hi``;
    logits that are not ``[batch, C]`` or have fewer than 2 classes; labels of the
    wrong shape, dtype (see :func:`jaxadv.validation.check_labels`: class indices
    must be integers) or outside ``[0, C)``; ``[batch, C]`` labels that are not
    one-hot; a targeted attack without targets; ``eps < 0``; and, when values are
    concrete, NaN/inf in ``x`` or ``x`` outside ``bounds`` (widened to the bounds
    rounded to ``x``'s dtype: in-bounds data rounded to float16 stays accepted).

    One-hot labels become their int32 argmax. ``soft_labels=True`` keeps
    ``[batch, C]`` labels as float32 rows (probabilities; no attack of the library
    takes them from a user: TRADES uses it for its inner maximisation).
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

    batch = x.shape[0]
    # An empty batch: the model's output is probed on one example instead (a model
    # that flattens with reshape(batch, -1) cannot trace 0 examples).
    probe = x32 if batch else jnp.zeros((1, *x.shape[1:]), jnp.float32)
    out = output_shape(model, params, probe)
    if len(out) == 2 and out[0] == probe.shape[0]:
        out = (batch, out[1])
    if len(out) != 2 or out[0] != x.shape[0]:
        raise ValueError(
            f"logits_fn must return logits of shape [batch, num_classes]=({x.shape[0]}, C), got {out}"
        )
    num_classes = out[1]
    if num_classes < 2:
        raise ValueError(
            f"logits_fn returns {num_classes} class score per example; an attack needs at least 2 "
            "classes (for a binary classifier with one logit z, return jnp.concatenate([-z, z], axis=-1))"
        )

    if y is None:
        if targeted:
            raise ValueError("y is required for a targeted attack: pass the target classes")
        labels = (
            predict(combine_model(model, params), x32).astype(jnp.int32)
            if batch
            else jnp.zeros((0,), jnp.int32)
        )
    else:
        labels = check_labels(y, x.shape[0], num_classes, soft=soft_labels)

    eps_arr = jnp.zeros((), jnp.float32) if eps is None else check_nonnegative(eps, "eps")
    eps_arr = check_batch_array(eps_arr, x, "eps")
    if x.shape[0]:
        check_in_bounds(x32, lo, hi, dtype)
    return Problem(model, params, x32, labels, lo, hi, eps_arr, dtype, num_classes)


def check_step_size(step_size: ArrayLike, x: Array, name: str = "step_size") -> Array:
    """A non-negative scalar or ``[batch]`` float32 step size."""
    return check_batch_array(check_nonnegative(step_size, name), x, name)


def check_finite_step(step_size: Array, lo: Array, hi: Array, name: str = "step_size") -> None:
    """Refuse (concrete values) an infinite step size with unbounded ``bounds``: the
    step would leave every finite value."""
    if is_traced(step_size, lo, hi):
        return
    if not bool(np.all(np.isfinite(np.asarray(step_size)))) and not (
        bool(np.all(np.isfinite(np.asarray(lo)))) and bool(np.all(np.isfinite(np.asarray(hi))))
    ):
        raise ValueError(
            f"{name} is infinite (eps=inf gives an infinite default step) and bounds are unbounded: "
            "nothing would keep the step finite; pass a finite step_size"
        )
