r"""Interval bound propagation (IBP; Gowal et al., 2018; Mirman et al., 2018).

Every input-dependent value of the model is replaced by an elementwise interval
:math:`[l, u]` that contains it for every input in the threat model, and each
primitive of the model's jaxpr maps intervals to intervals (see
:mod:`jaxadv.certify._jaxpr` for how the jaxpr is read):

* affine maps with constant weights :math:`W` (``dot_general``,
  ``conv_general_dilated``, ``mul``/``div`` by a constant) in centre/radius form:
  :math:`c' = W c,\ r' = |W| r` with :math:`c = (l+u)/2,\ r = (u-l)/2`;
* ``add``/``sub``/``neg`` by interval arithmetic, ``mul`` of two intervals by the
  four corner products;
* non-decreasing maps (``max`` and so ``relu``, ``min``, ``tanh``, ``logistic``,
  ``exp``, ``log``, ``erf``..., reshapes, broadcasts, transposes, slices,
  concatenation, padding, ``reduce_sum``/``reduce_max``, max and sum pooling
  (``reduce_window_max``/``reduce_window_sum``)) to :math:`[f(l), f(u)]`;
* ``abs``; comparisons and ``select_n`` (``jnp.where``, leaky ReLU) through
  "certainly true" / "possibly true" boolean intervals.

Anything else that depends on ``x`` (``integer_pow``, ``sqrt``, ``rsqrt``, division by
an input-dependent value, loops...) raises a ``ValueError`` naming the primitive; such
primitives are fine on values that do not depend on ``x`` (batch-norm statistics).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv._core.problem import prepare
from jaxadv.certify._jaxpr import Const, Node, Program, trace, unsupported
from jaxadv.models import ModelStatic, combine_model
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, Norm
from jaxadv.validation import check_norm

__all__ = ["IntervalBounds", "ibp_bounds"]


class IntervalBounds(NamedTuple):
    """Elementwise bounds: ``lower <= value <= upper`` for every admissible input.

    Attributes:
      lower: ``[batch, C]`` (or ``[batch, S]`` for a specification), float32.
      upper: same shape as ``lower``.
    """

    lower: Array
    upper: Array


class Interval(NamedTuple):
    lo: Array
    hi: Array


Value = Union[Interval, Const]


def lo_of(v: Value) -> Any:
    return v.value if isinstance(v, Const) else v.lo


def hi_of(v: Value) -> Any:
    return v.value if isinstance(v, Const) else v.hi


#: Non-decreasing in every argument that may depend on ``x``; ``None``: all arguments,
#: else the positions that may (the others must be constants, e.g. gather indices).
MONOTONE: dict[str, tuple[int, ...] | None] = {
    name: None
    for name in (
        "add",
        "add_any",
        "max",
        "min",
        "clamp",
        "concatenate",
        "pad",
        "reshape",
        "broadcast_in_dim",
        "transpose",
        "squeeze",
        "expand_dims",
        "slice",
        "rev",
        "copy",
        "copy_p",
        "convert_element_type",
        "reduce_precision",
        "reduce_sum",
        "reduce_max",
        "reduce_min",
        "reduce_window_sum",
        "reduce_window_max",
        "reduce_window_min",
        "cumsum",
        "cummax",
        "cummin",
        "tanh",
        "logistic",
        "exp",
        "exp2",
        "log",
        "log1p",
        "expm1",
        "erf",
        "atan",
        "asinh",
        "sinh",
        "floor",
        "ceil",
        "round",
        "sign",
        "and",
        "or",
    )
}
MONOTONE.update({"gather": (0,), "dynamic_slice": (0,)})


def _check_positions(node: Node, args: list[Value], allowed: tuple[int, ...] | None, method: str) -> None:
    if allowed is None:
        return
    for i, a in enumerate(args):
        if isinstance(a, Interval) and i not in allowed:
            raise ValueError(
                f"{method} does not support {node.name!r} whose argument {i} depends on the input "
                "(only constant indices are supported)"
            )


def _monotone(node: Node, args: list[Value]) -> list[Value]:
    _check_positions(node, args, MONOTONE[node.name], "ibp_bounds")
    lo = node.bind(*[lo_of(a) for a in args])
    hi = node.bind(*[hi_of(a) for a in args])
    return [Interval(a, b) for a, b in zip(lo, hi, strict=True)]


def _one_sided(node: Node, args: list[Value], *, method: str = "ibp_bounds") -> int:
    """Position of the single input-dependent argument of a bilinear primitive."""
    positions = [i for i, a in enumerate(args) if not isinstance(a, Const)]
    if len(positions) != 1:
        raise ValueError(
            f"{method} supports {node.name!r} only with one constant operand "
            "(a product of two input-dependent values is not affine)"
        )
    return positions[0]


def _bilinear(node: Node, args: list[Value]) -> list[Value]:
    if node.name == "mul" and all(isinstance(a, Interval) for a in args):
        (al, ah), (bl, bh) = ((lo_of(a), hi_of(a)) for a in args)
        corners = jnp.stack([al * bl, al * bh, ah * bl, ah * bh])
        return [Interval(corners.min(0), corners.max(0))]
    i = _one_sided(node, args)
    v = args[i]
    assert isinstance(v, Interval)
    center, radius = (v.lo + v.hi) / 2, (v.hi - v.lo) / 2
    w: list[Any] = [a.value if isinstance(a, Const) else None for a in args]
    c_args = [center if j == i else w[j] for j in range(len(args))]
    r_args = [radius if j == i else jnp.abs(w[j]) for j in range(len(args))]
    (c,) = node.bind(*c_args)
    (r,) = node.bind(*r_args)
    return [Interval(c - r, c + r)]


def _div(node: Node, args: list[Value]) -> list[Value]:
    num, den = args
    if not isinstance(den, Const):
        raise ValueError("ibp_bounds does not support division by an input-dependent value ('div')")
    assert isinstance(num, Interval)
    a, b = num.lo / den.value, num.hi / den.value
    return [Interval(jnp.minimum(a, b), jnp.maximum(a, b))]


def _sub(node: Node, args: list[Value]) -> list[Value]:
    a, b = args
    return [Interval(lo_of(a) - hi_of(b), hi_of(a) - lo_of(b))]


def _neg(node: Node, args: list[Value]) -> list[Value]:
    (a,) = args
    return [Interval(-hi_of(a), -lo_of(a))]


def _abs(node: Node, args: list[Value]) -> list[Value]:
    (a,) = args
    lo, hi = lo_of(a), hi_of(a)
    low = jnp.where(lo >= 0, lo, jnp.where(hi <= 0, -hi, jnp.zeros_like(lo)))
    return [Interval(low, jnp.maximum(jnp.abs(lo), jnp.abs(hi)))]


def _not(node: Node, args: list[Value]) -> list[Value]:
    (a,) = args
    return [Interval(~hi_of(a), ~lo_of(a))]


def _greater(strict: bool, swap: bool) -> Callable[[Node, list[Value]], list[Value]]:
    """``a > b`` (or ``>=``) as (certainly true, possibly true)."""

    def rule(node: Node, args: list[Value]) -> list[Value]:
        a, b = args[::-1] if swap else args
        op = jnp.greater if strict else jnp.greater_equal
        return [Interval(op(lo_of(a), hi_of(b)), op(hi_of(a), lo_of(b)))]

    return rule


def _equal(negate: bool) -> Callable[[Node, list[Value]], list[Value]]:
    def rule(node: Node, args: list[Value]) -> list[Value]:
        a, b = args
        possibly = (lo_of(a) <= hi_of(b)) & (lo_of(b) <= hi_of(a))
        certainly = (lo_of(a) == hi_of(a)) & (lo_of(b) == hi_of(b)) & (lo_of(a) == lo_of(b))
        return [Interval(~possibly, ~certainly) if negate else Interval(certainly, possibly)]

    return rule


def _select_n(node: Node, args: list[Value]) -> list[Value]:
    pred, *cases = args
    if isinstance(pred, Const):
        return _monotone_all(node, args)
    lows = [jnp.broadcast_to(lo_of(c), pred.lo.shape) for c in cases]
    highs = [jnp.broadcast_to(hi_of(c), pred.lo.shape) for c in cases]
    hull_lo, hull_hi = functools.reduce(jnp.minimum, lows), functools.reduce(jnp.maximum, highs)
    if pred.lo.dtype != jnp.bool_:
        return [Interval(hull_lo, hull_hi)]
    # select_n(p, when_false, when_true): certain predicates pick one case exactly.
    lo = jnp.where(pred.lo, lows[1], jnp.where(~pred.hi, lows[0], hull_lo))
    hi = jnp.where(pred.lo, highs[1], jnp.where(~pred.hi, highs[0], hull_hi))
    return [Interval(lo, hi)]


def _monotone_all(node: Node, args: list[Value]) -> list[Value]:
    lo = node.bind(*[lo_of(a) for a in args])
    hi = node.bind(*[hi_of(a) for a in args])
    return [Interval(a, b) for a, b in zip(lo, hi, strict=True)]


RULES: dict[str, Callable[[Node, list[Value]], list[Value]]] = {name: _monotone for name in MONOTONE}
RULES.update(
    {
        "mul": _bilinear,
        "dot_general": _bilinear,
        "conv_general_dilated": _bilinear,
        "div": _div,
        "sub": _sub,
        "neg": _neg,
        "abs": _abs,
        "not": _not,
        "gt": _greater(True, False),
        "ge": _greater(False, False),
        "lt": _greater(True, True),
        "le": _greater(False, True),
        "eq": _equal(False),
        "ne": _equal(True),
        "select_n": _select_n,
    }
)
SUPPORTED = ", ".join(sorted(RULES))


def apply_rule(node: Node, args: list[Value]) -> list[Value]:
    """The interval rule for one node (``ValueError`` for an unsupported primitive)."""
    rule = RULES.get(node.name)
    if rule is None:
        raise unsupported(node, "ibp_bounds", SUPPORTED)
    return rule(node, args)


def read(env: dict[int, Value], ref: Any) -> Value:
    return ref if isinstance(ref, Const) else env[ref]


def propagate(program: Program, box: Interval) -> Interval:
    """Interval of the program's output when its input lies in ``box``."""
    env: dict[int, Value] = {0: box}
    for node in program.nodes:
        for i, v in zip(node.outputs, apply_rule(node, [read(env, r) for r in node.inputs]), strict=True):
            env[i] = v
    out = read(env, program.output)
    if isinstance(out, Const):
        value = jnp.asarray(out.value)
        return Interval(value, value)
    return out


def input_box(x: Array, lo: Array, hi: Array, eps: Array) -> Interval:
    """The smallest box containing ``{x' : ||x' - x|| <= eps} ∩ [lo, hi]`` for any of the
    norms (every L2 or L1 ball lies inside the L-inf ball of the same radius)."""
    e = jnp.reshape(eps, eps.shape + (1,) * (x.ndim - eps.ndim))
    return Interval(jnp.maximum(x - e, lo), jnp.minimum(x + e, hi))


def user_fn(model: ModelStatic) -> Callable[[Any, Array], Array]:
    """``(params, x) -> logits`` for a split model: parameters become the program's constants."""

    def fn(params: Any, x: Array) -> Array:
        return combine_model(model, params)(x)

    return fn


@functools.partial(jax.jit, static_argnames=("model",))
def _ibp(model: ModelStatic, params: list[Any], x: Array, lo: Array, hi: Array, eps: Array) -> IntervalBounds:
    program = trace(user_fn(model), params, x)
    out = propagate(program, input_box(x, lo, hi, jnp.broadcast_to(eps, x.shape[:1])))
    shape = jax.eval_shape(user_fn(model), params, x).shape
    lower = jnp.broadcast_to(out.lo, shape).astype(jnp.float32)
    upper = jnp.broadcast_to(out.hi, shape).astype(jnp.float32)
    return IntervalBounds(lower, upper)


def checked_problem(
    logits_fn: LogitsFn, x: ArrayLike, y: ArrayLike | None, *, eps: ArrayLike, norm: Norm, bounds: Bounds
) -> tuple[Any, str]:
    """Inputs checked as for an attack (:func:`jaxadv.attacks.base.prepare`); labels default to zeros."""
    norm_name = check_norm(norm)
    if y is None:
        y = np.zeros(np.shape(x)[:1], np.int32)
    problem = prepare(logits_fn, x, y, bounds=bounds, eps=eps)
    return problem, norm_name


def ibp_bounds(
    logits_fn: LogitsFn,
    x: ArrayLike,
    *,
    eps: float | ArrayLike,
    norm: Norm = "linf",
    bounds: Bounds = (0.0, 1.0),
) -> IntervalBounds:
    r"""Interval bounds on the logits over a norm ball intersected with the input box.

    Propagates the box :math:`[\max(x-\epsilon, lo), \min(x+\epsilon, hi)]` through the
    model's jaxpr (see the module docstring for the rule of each primitive). The box
    contains :math:`B_\epsilon(x)\cap[lo,hi]` for all three norms, so the bounds are
    sound for ``"l2"`` and ``"l1"`` as well, though loose there (the first layer is
    bounded as for L-inf; :func:`crown_bounds` uses the dual norm).

    Args:
      logits_fn: ``x [batch, ...] -> logits [batch, C]``, e.g. :func:`jaxadv.from_flax`
        (normalisation included: ``eps`` and ``bounds`` are in the raw input space).
      x: ``[batch, ...]`` inputs inside ``bounds``.
      eps: radius, a scalar or ``[batch]`` (traced).
      norm: ``"linf"``, ``"l2"`` or ``"l1"``.
      bounds: ``(lo, hi)`` of the valid inputs.

    Returns:
      :class:`IntervalBounds` ``(lower, upper)``, each ``[batch, C]`` float32, with
      ``lower <= logits_fn(x') <= upper`` for every admissible ``x'``.

    Raises:
      ValueError: for the input errors of :func:`jaxadv.attacks.base.prepare` (bad shapes, ``eps < 0``,
        ``x`` outside ``bounds``), an unknown norm, or a primitive applied to an
        input-dependent value that has no interval rule (named in the message).
    """
    problem, _ = checked_problem(logits_fn, x, None, eps=eps, norm=norm, bounds=bounds)
    return _ibp(problem.model, problem.params, problem.x, problem.lo, problem.hi, problem.eps)
