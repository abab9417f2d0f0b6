r"""CROWN: backward linear bound propagation (Zhang et al., NeurIPS 2018).

For a specification :math:`s^\top z(x')` of the logits :math:`z`, CROWN walks the
model's jaxpr backwards from the output keeping a linear lower bound
:math:`s^\top z(x') \ge \Lambda\cdot v + \beta` in terms of the current value
:math:`v`:

* an affine primitive :math:`v = A(u) + a` (``dot_general``/``conv_general_dilated``
  with constant weights, ``add``, ``mul``/``div`` by constants, reshapes, pooling by
  sums...) gives :math:`\Lambda \mapsto A^\top\Lambda`, :math:`\beta \mapsto \beta +
  \Lambda\cdot a`; the transpose is the vector-Jacobian product of the primitive
  itself (:func:`jax.vjp`), so every affine primitive of the model is its own
  backward layer;
* a ReLU (``max(u, c)`` or ``min(u, c)`` with a constant ``c``) with pre-activation
  bounds :math:`l \le t \le u` is replaced by a line below it where the coefficient
  is positive and a line above it where it is negative: above, the chord
  :math:`\frac{u}{u-l}(t - l)`; below, slope 1 if :math:`u \ge -l` else 0 (the
  adaptive lower bound of the paper); stable neurons are exact.

At the input, :math:`\min_{x'}\Lambda\cdot x' + \beta` over the threat model is
closed-form: for L-inf with the input box, over the box
:math:`[\max(x-\epsilon, lo), \min(x+\epsilon, hi)]` exactly; for L2/L1 the larger
of the ball bound :math:`\Lambda\cdot x - \epsilon\|\Lambda\|_*` (dual norm) and the
bound over that box (both contain the feasible set).

Pre-activation bounds of every ReLU come from the same backward pass started at
that ReLU's input (``intermediate="crown"``, the paper's method), intersected with
interval bounds; ``intermediate="ibp"`` uses interval bounds alone (faster, looser).
The final bounds are intersected with the interval bounds of the output, so they are
never looser than :func:`ibp_bounds` (CROWN alone can be, on unstable ReLUs).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal

import jax
import jax.numpy as jnp

from jaxadv.certify._jaxpr import Const, Node, Program, trace, unsupported
from jaxadv.certify.intervals import (
    Interval,
    IntervalBounds,
    Value,
    apply_rule,
    checked_problem,
    hi_of,
    input_box,
    lo_of,
    read,
    user_fn,
)
from jaxadv.models import ModelStatic
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, Norm
from jaxadv.validation import check_steps

__all__ = ["crown_bounds"]

Intermediate = Literal["crown", "ibp"]

#: Primitives that are affine in their input-dependent arguments; ``None``: in all of
#: them, else the positions that may depend on ``x``.
_AFFINE: dict[str, tuple[int, ...] | None] = {
    name: None
    for name in (
        "add",
        "add_any",
        "sub",
        "neg",
        "reshape",
        "broadcast_in_dim",
        "transpose",
        "squeeze",
        "expand_dims",
        "concatenate",
        "slice",
        "pad",
        "rev",
        "copy",
        "copy_p",
        "convert_element_type",
        "reduce_precision",
        "reduce_sum",
        "reduce_window_sum",
        "cumsum",
    )
}
_AFFINE.update({"div": (0,), "select_n": (1, 2, 3, 4, 5, 6, 7, 8), "gather": (0,), "dynamic_slice": (0,)})
#: Affine when exactly one argument depends on ``x``.
_BILINEAR = ("mul", "dot_general", "conv_general_dilated")
_RELU = ("max", "min")
SUPPORTED = ", ".join(sorted([*_AFFINE, *_BILINEAR, "max (with a constant)", "min (with a constant)"]))


def _kind(node: Node) -> str:
    """``"affine"`` or ``"relu"``; ``ValueError`` for anything CROWN cannot bound."""
    dependent = [i for i, r in enumerate(node.inputs) if not isinstance(r, Const)]
    if node.name in _RELU and len(dependent) == 1:
        return "relu"
    if node.name in _BILINEAR:
        if len(dependent) == 1:
            return "affine"
        raise ValueError(
            f"crown_bounds supports {node.name!r} only with one constant operand "
            "(a product of two input-dependent values is not affine)"
        )
    if node.name in _AFFINE:
        allowed = _AFFINE[node.name]
        if allowed is not None and any(i not in allowed for i in dependent):
            raise ValueError(
                f"crown_bounds supports {node.name!r} only when the arguments other than the data are "
                "constants (division by, selection on, or indexing with an input-dependent value is not "
                "affine)"
            )
        return "affine"
    raise unsupported(node, "crown_bounds", SUPPORTED + "; use ibp_bounds for other primitives")


def _relu_slopes(t_lo: Array, t_hi: Array) -> tuple[Array, Array, Array]:
    """Lower slope, upper slope and upper intercept of the relaxation of ``relu`` on ``[t_lo, t_hi]``."""
    active = t_lo >= 0
    inactive = t_hi <= 0
    unstable = ~active & ~inactive
    width = jnp.where(unstable, t_hi - t_lo, 1.0)
    chord = jnp.where(unstable, t_hi / width, 0.0)
    upper_slope = jnp.where(active, 1.0, chord)
    upper_icpt = jnp.where(unstable, -chord * t_lo, 0.0)
    lower_slope = jnp.where(active, 1.0, jnp.where(unstable & (t_hi >= -t_lo), 1.0, 0.0))
    return lower_slope, upper_slope, upper_icpt


def _sum_rest(a: Array) -> Array:
    return jnp.sum(a.reshape(a.shape[0], -1), axis=1)


class _Crown:
    """Backward passes over one example's program (shapes ``[1, ...]``)."""

    def __init__(self, program: Program, box: Interval, x: Array, eps: Array, norm: str) -> None:
        self.program = program
        self.box = box
        self.x = x
        self.eps = eps
        self.norm = norm
        self.pre: dict[int, Interval] = {}

    def _relu_parts(self, node: Node) -> tuple[int, Array, bool]:
        (z,) = [r for r in node.inputs if not isinstance(r, Const)]
        (c,) = [r.value for r in node.inputs if isinstance(r, Const)]
        assert isinstance(z, int)
        return z, jnp.asarray(c), node.name == "min"

    def backward(self, upto: int, target: int, coef: Array) -> tuple[Array, Array]:
        """``(Lambda, beta)`` with ``coef . v_target >= Lambda . x + beta`` for the value
        ``target`` defined by the first ``upto`` nodes; ``coef`` is ``[S, *shape]``."""
        num = coef.shape[0]
        pending: dict[int, Array] = {target: coef}
        bias = jnp.zeros((num,), coef.dtype)
        for node in reversed(self.program.nodes[:upto]):
            (out,) = node.outputs
            lam = pending.pop(out, None)
            if lam is None:
                continue
            if _kind(node) == "relu":
                z, c, is_min = self._relu_parts(node)
                pre = self.pre[z]
                # max(z, c) = c + relu(z - c); min(z, c) = c - relu(c - z).
                sign = -1.0 if is_min else 1.0
                t_lo, t_hi = (c - pre.hi, c - pre.lo) if is_min else (pre.lo - c, pre.hi - c)
                lower_slope, upper_slope, upper_icpt = _relu_slopes(t_lo, t_hi)
                lam_t = sign * lam
                pos, neg = jnp.maximum(lam_t, 0.0), jnp.minimum(lam_t, 0.0)
                lam_relu = pos * lower_slope + neg * upper_slope
                # lam . y >= lam . c + lam_relu . t + neg . icpt, with t = sign * (z - c).
                bias = (
                    bias + _sum_rest(lam * c) + _sum_rest(neg * upper_icpt) - _sum_rest(lam_relu * c * sign)
                )
                contributions = {z: sign * lam_relu}
            else:
                contributions, offset = self._affine_backward(node, lam)
                bias = bias + _sum_rest(lam * offset)
            for ref, g in contributions.items():
                pending[ref] = pending[ref] + g if ref in pending else g
        lam_x = pending.pop(0, jnp.zeros((num, *self.program.shapes[0].shape), coef.dtype))
        return lam_x, bias

    def _affine_backward(self, node: Node, lam: Array) -> tuple[dict[int, Array], Array]:
        dependent = [i for i, r in enumerate(node.inputs) if not isinstance(r, Const)]

        def f(*values: Array) -> Array:
            args: list[Any] = list(node.inputs)
            for i, v in zip(dependent, values, strict=True):
                args[i] = v
            return node.bind(*[a.value if isinstance(a, Const) else a for a in args])[0]

        out_dtype = self.program.shapes[node.outputs[0]].dtype
        if not jnp.issubdtype(out_dtype, jnp.floating):
            raise unsupported(node, "crown_bounds", "floating-point affine maps")
        zeros = []
        for i in dependent:
            ref = node.inputs[i]
            assert isinstance(ref, int)
            shape = self.program.shapes[ref]
            if not jnp.issubdtype(shape.dtype, jnp.floating):
                raise unsupported(node, "crown_bounds", "floating-point affine maps")
            zeros.append(jnp.zeros(shape.shape, shape.dtype))
        offset, pullback = jax.vjp(f, *zeros)
        grads = jax.vmap(pullback)(lam.astype(offset.dtype))
        contributions: dict[int, Array] = {}
        for i, g in zip(dependent, grads, strict=True):
            ref = node.inputs[i]
            assert isinstance(ref, int)
            contributions[ref] = contributions[ref] + g if ref in contributions else g
        return contributions, jnp.broadcast_to(offset, lam.shape[1:])

    def concretize(self, lam: Array, bias: Array) -> Array:
        """``min over the threat model of lam . x' + bias``, shape ``[S]``."""
        center = (self.box.lo + self.box.hi) / 2
        radius = (self.box.hi - self.box.lo) / 2
        box_bound = _sum_rest(lam * center) - _sum_rest(jnp.abs(lam) * radius)
        if self.norm == "linf":
            return box_bound + bias
        flat = lam.reshape(lam.shape[0], -1)
        dual = jnp.linalg.norm(flat, axis=1) if self.norm == "l2" else jnp.max(jnp.abs(flat), axis=1)
        ball_bound = _sum_rest(lam * self.x) - self.eps * dual
        return jnp.maximum(ball_bound, box_bound) + bias

    def bounds_of(self, upto: int, target: int) -> Interval:
        """CROWN lower and upper bounds of every element of value ``target``."""
        shape = self.program.shapes[target].shape
        size = math.prod(shape)
        eye = jnp.eye(size, dtype=jnp.float32)
        coef = jnp.concatenate([eye, -eye]).reshape(2 * size, *shape)
        lam, bias = self.backward(upto, target, coef)
        conc = self.concretize(lam, bias)
        return Interval(conc[:size].reshape(shape), -conc[size:].reshape(shape))

    def forward(self, intermediate: Intermediate) -> Value:
        """Pre-activation bounds of every ReLU; returns the interval of the output
        (interval propagation from those bounds)."""
        env: dict[int, Value] = {0: self.box}
        for k, node in enumerate(self.program.nodes):
            kind = _kind(node)
            if kind == "relu":
                z, _, _ = self._relu_parts(node)
                if z not in self.pre:
                    iv = env[z]
                    assert isinstance(iv, Interval)
                    if intermediate == "crown":
                        cr = self.bounds_of(k, z)
                        iv = Interval(jnp.maximum(iv.lo, cr.lo), jnp.minimum(iv.hi, cr.hi))
                    self.pre[z] = iv
                    env[z] = iv
            for i, v in zip(node.outputs, apply_rule(node, [read(env, r) for r in node.inputs]), strict=True):
                env[i] = v
        return read(env, self.program.output)


def _lower_one(
    program: Program,
    x: Array,
    lo: Array,
    hi: Array,
    eps: Array,
    coef: Array,
    norm: str,
    intermediate: Intermediate,
) -> Array:
    """Lower bounds ``[S]`` of ``coef [S, C] @ logits`` for one example (``x`` is ``[1, ...]``)."""
    box = input_box(x, lo, hi, eps[None])
    crown = _Crown(program, box, x, eps, norm)
    iv = crown.forward(intermediate)
    out_lo = jnp.broadcast_to(lo_of(iv), (1, coef.shape[1]))[0]
    out_hi = jnp.broadcast_to(hi_of(iv), (1, coef.shape[1]))[0]
    # The interval bound of the specification: CROWN is not always tighter on its own.
    interval = coef.clip(min=0.0) @ out_lo + coef.clip(max=0.0) @ out_hi
    out = program.output
    if isinstance(out, Const):
        return interval
    lam, bias = crown.backward(len(program.nodes), out, coef[:, None, :])
    return jnp.maximum(crown.concretize(lam, bias), interval)


@functools.partial(jax.jit, static_argnames=("model", "norm", "intermediate", "batch_size"))
def _crown_lower(
    model: ModelStatic,
    params: list[Any],
    x: Array,
    lo: Array,
    hi: Array,
    eps: Array,
    coef: Array,
    *,
    norm: str,
    intermediate: Intermediate,
    batch_size: int,
) -> Array:
    """Lower bounds ``[batch, S]`` of ``coef [batch, S, C] @ logits``, example by example."""
    program = trace(user_fn(model), params, x[:1])
    lo = jnp.broadcast_to(lo, x.shape)
    hi = jnp.broadcast_to(hi, x.shape)
    eps = jnp.broadcast_to(eps, x.shape[:1])

    def one(args: tuple[Array, ...]) -> Array:
        xi, loi, hii, epsi, ci = args
        return _lower_one(program, xi[None], loi[None], hii[None], epsi, ci, norm, intermediate)

    return jax.lax.map(one, (x, lo, hi, eps, coef), batch_size=min(batch_size, max(x.shape[0], 1)))


def check_intermediate(intermediate: Any) -> Intermediate:
    if intermediate not in ("crown", "ibp"):
        raise ValueError(f"intermediate must be 'crown' or 'ibp', got {intermediate!r}")
    return intermediate  # type: ignore[no-any-return]


def check_batch_size(batch_size: Any) -> int:
    return check_steps(batch_size, "batch_size")


def crown_lower(
    problem: Any, coef: Array, *, norm: str, intermediate: Intermediate, batch_size: int
) -> Array:
    """:func:`_crown_lower` on a prepared problem (empty batches included)."""
    if problem.x.shape[0] == 0:
        return jnp.zeros((0, coef.shape[1]), jnp.float32)
    return _crown_lower(
        problem.model,
        problem.params,
        problem.x,
        problem.lo,
        problem.hi,
        problem.eps,
        coef,
        norm=norm,
        intermediate=intermediate,
        batch_size=batch_size,
    )


def crown_bounds(
    logits_fn: LogitsFn,
    x: ArrayLike,
    *,
    eps: float | ArrayLike,
    norm: Norm = "linf",
    bounds: Bounds = (0.0, 1.0),
    spec: ArrayLike | None = None,
    intermediate: Intermediate = "crown",
    batch_size: int = 32,
) -> IntervalBounds:
    r"""CROWN bounds on the logits (or on ``spec @ logits``) over the threat model.

    See the module docstring for the relaxation. The model is traced once on a
    single example and bounded example by example (each example's bounds hold for
    ``logits_fn`` applied to that example alone: a model must treat examples
    independently, as every classifier in inference mode does).

    Args:
      logits_fn: ``x [batch, ...] -> logits [batch, C]`` built from dense and
        convolution layers, ReLUs (``max``/``min`` with a constant) and the affine
        primitives listed in the module docstring.
      x: ``[batch, ...]`` inputs inside ``bounds``.
      eps: radius, a scalar or ``[batch]`` (traced).
      norm: ``"linf"``, ``"l2"`` or ``"l1"``.
      bounds: ``(lo, hi)`` of the valid inputs.
      spec: optional ``[S, C]`` or ``[batch, S, C]`` matrix: bound ``spec @ logits``
        instead of the logits (folding the specification into the last layer is
        tighter than combining logit bounds, e.g. for margins ``z_y - z_j``).
      intermediate: ``"crown"`` (pre-activation bounds by CROWN, intersected with IBP)
        or ``"ibp"`` (interval bounds only).
      batch_size: examples bounded at once (static); memory grows with
        ``batch_size x neurons x input size``.

    Returns:
      :class:`IntervalBounds` ``(lower, upper)``: ``[batch, C]`` float32, or
      ``[batch, S]`` with ``spec``.

    Raises:
      ValueError: for the input errors of :func:`jaxadv.attacks.base.prepare`, an unknown ``norm``,
        a badly shaped ``spec``, or a primitive that CROWN cannot relax (named in the
        message, e.g. ``tanh`` or a max pooling: use :func:`ibp_bounds`).
    """
    problem, norm_name = checked_problem(logits_fn, x, None, eps=eps, norm=norm, bounds=bounds)
    intermediate = check_intermediate(intermediate)
    batch_size = check_batch_size(batch_size)
    batch, num_classes = problem.x.shape[0], problem.num_classes
    if spec is None:
        s = jnp.broadcast_to(jnp.eye(num_classes, dtype=jnp.float32), (batch, num_classes, num_classes))
    else:
        s = jnp.asarray(spec, jnp.float32)
        if s.ndim == 2:
            s = jnp.broadcast_to(s, (batch, *s.shape))
        if s.ndim != 3 or s.shape[0] != batch or s.shape[2] != num_classes:
            raise ValueError(
                f"spec must have shape [S, num_classes] or [batch, S, num_classes] with num_classes="
                f"{num_classes} and batch={batch}, got {jnp.shape(spec)}"
            )
    num = s.shape[1]
    lower = crown_lower(
        problem,
        jnp.concatenate([s, -s], axis=1),
        norm=norm_name,
        intermediate=intermediate,
        batch_size=batch_size,
    )
    return IntervalBounds(lower[:, :num], -lower[:, num:])
