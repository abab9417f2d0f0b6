r"""Fast Minimum-Norm attack, FMN (Pintor et al., 2021), for L0, L1, L2 and L-inf.

FMN looks for the smallest perturbation :math:`\delta` that changes the
model's decision by alternating a gradient step on a margin loss with a
projection onto a norm ball whose radius :math:`\epsilon_k` adapts at every
step. With logits :math:`z(x)` and labels :math:`y` (targets :math:`t` when
targeted) the loss, negative exactly when the model is fooled (up to ties), is

.. math::
    \ell(x') = z_y(x') - \max_{j \ne y} z_j(x') \quad\text{(untargeted)},\qquad
    \ell(x') = \max_{j \ne t} z_j(x') - z_t(x') \quad\text{(targeted)}.

Step :math:`k = 0 .. K-1` (:math:`K` = ``steps``), at :math:`x_k = x + \delta_k`
(:math:`\delta_0 = 0`, or a point found from ``starting_points``), with
:math:`g_k = \nabla \ell(x_k)`:

1. Record: if :math:`x_k` is adversarial and :math:`\|\delta_k\|_p` is the
   smallest norm seen so far for its example, keep it.
2. Radius, with :math:`\gamma_k` cosine-annealed from ``gamma_init`` to ``gamma_final``:

   .. math::
       \epsilon_{k+1} = \begin{cases}
         \min\big(\epsilon_k (1 - \gamma_k),\ \|\delta_{best}\|_p\big) & x_k \text{ adversarial} \\
         \epsilon_k (1 + \gamma_k) & \text{else, if an adversarial point was found before} \\
         \max\big(\|\delta_k\|_p + |\ell(x_k)| / \|g_k\|_q,\ (1 + \gamma_k)\|\delta_k\|_p\big) & \text{else}
       \end{cases}

   :math:`q` the dual norm (:math:`\|\cdot\|_2` for L2, :math:`\|\cdot\|_1` for
   L-inf, :math:`\|\cdot\|_\infty` for L1): the last case is the distance to the
   linearised decision boundary (the paper's rule; the lower bound
   :math:`(1 + \gamma_k)\|\delta_k\|_p` is ours: without it an iterate that lands
   exactly on the boundary, a tie that is not adversarial, would stay there).
   For L0 the radius counts coordinates:
   :math:`\min(\epsilon_k - 1, \lfloor\epsilon_k(1-\gamma_k)\rfloor, \|\delta_{best}\|_0)`
   when adversarial, :math:`\max(\epsilon_k + 1, \lfloor\epsilon_k(1+\gamma_k)\rfloor)`
   otherwise, never below 1, starting at 1 (with ``starting_points``, at the
   number of coordinates the start changes). The radius never exceeds the largest
   norm a perturbation inside the box can have, :math:`\|\max(x - lo, hi - x)\|_p`
   (:math:`n`, the number of coordinates, for L0).
3. Step and projection, with :math:`\alpha_k` cosine-annealed from ``alpha_init``
   to ``alpha_final``:

   .. math::
       \delta_{k+1} = \Pi_{\epsilon_{k+1}}\big(\delta_k - \alpha_k\, g_k / \|g_k\|_2\big)

   (the gradient is normalised in L2 for every norm, as in the paper).
   :math:`\Pi` maps onto the ball intersected with the box
   :math:`[lo - x, hi - x]`: L-inf clips (exact); L2 rescales to the ball, then
   clips to the box; L1 is the exact Euclidean projection onto the L1 ball
   intersected with the box (:func:`jaxadv.threat_models.project_l1_box`); L0
   keeps the :math:`\lfloor\epsilon\rfloor` coordinates of the box-clipped step
   that lower the squared distance most and zeroes the rest (the exact
   Euclidean projection onto the L0 ball intersected with the box).

The cosine annealing is :math:`v_k = v_{final} + (v_{init} - v_{final})(1 + \cos(\pi k / K)) / 2`.
The point after the last step is recorded too (one more gradient evaluation,
``steps + 1`` in all). Success is always :func:`jaxadv.success.hits` on the
iterate rounded to the caller's dtype.

One change from the paper's code: before the step and the radius update, the
coordinates of :math:`g_k` that would push an iterate lying on a face of the
box out of it (:math:`x_{k,i} = lo_i` and :math:`g_{k,i} > 0`, or
:math:`x_{k,i} = hi_i` and :math:`g_{k,i} < 0`) are set to 0, so that the step
moves along the box and :math:`|\ell| / \|g_k\|_q` is the distance to the
linearised boundary within that face. Without it, on inputs with many
coordinates at a bound (dark pixels), the step is mostly clipped away, the
radius estimate stays below the true distance, and L2 iterates stall: on the
digits CNN of the tests, the unmodified rule fools about 20% of the examples in
100 steps, this one all of them. Away from the box nothing changes.

Starting points. With ``starting_points`` (adversarial points, one per
example), a bisection of ``binary_search_steps`` steps first moves each start
towards ``x`` along a norm-specific path :math:`m(\beta)`, :math:`\beta \in [0, 1]`
(:math:`m(0) = x`, :math:`m(1)` = the start), keeping the smallest adversarial
:math:`\beta`: L2 :math:`x + \beta\delta`; L-inf :math:`x + \mathrm{clip}(\delta,
\pm\beta\|\delta\|_\infty)`; L1 soft thresholding
:math:`x + \mathrm{sign}(\delta)\max(|\delta| - (1 - \beta)\|\delta\|_\infty, 0)`;
L0 the :math:`\lceil\beta\|\delta\|_0\rceil` largest :math:`|\delta_i|`. FMN then
starts there. An example whose start is not adversarial starts from ``x``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal, NamedTuple, overload

import jax
import jax.numpy as jnp

from jaxadv._core.compile import jit
from jaxadv._core.problem import prepare
from jaxadv._core.rows import count_changed, flat, select_rows
from jaxadv._core.search import midpoint, narrow
from jaxadv.engine import iterate
from jaxadv.losses import cw_margin, finite_rows
from jaxadv.models import combine_model
from jaxadv.success import AttackResult, as_returned, hits
from jaxadv.threat_models import (
    clip_to_bounds,
    norm_of,
    per_example,
    project,
    project_l1_box,
    steepest_direction,
)
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, LoopMode, Norm, PRNGKey
from jaxadv.validation import check_batch_array, check_finite, check_norm, check_steps

__all__ = ["fmn"]

#: The norms of :func:`fmn`: those of :data:`jaxadv.typing.Norm` and L0.
FMNNorm = Norm | Literal["l0", "L0"]

_TINY = 1e-12
_DUAL = {"l2": "l2", "linf": "l1", "l1": "linf"}


class _State(NamedTuple):
    x_t: Array  # current iterate x + delta_k, float32, inside the box
    eps: Array  # [batch] radius of the ball
    best_norm: Array  # [batch] norm of the smallest adversarial point found (inf: none yet)
    best_x: Array  # that point (x where none)
    found: Array  # [batch] bool: some iterate was adversarial


class _Operands(NamedTuple):
    params: Any
    x: Array
    labels: Array  # [batch] int32 (targets when targeted)
    lo: Array
    hi: Array
    alpha_init: Array
    alpha_final: Array
    gamma_init: Array
    gamma_final: Array
    worst: Array  # [batch] largest norm of a perturbation inside the box
    total: Array  # float32 number of steps K (traced: a new K compiles nothing new)


class _Static(NamedTuple):
    model: Any
    norm: str
    targeted: bool
    dtype: Any


def _size(delta: Array, norm: str) -> Array:
    """``[batch]`` norm of ``delta``; for L0 the number of non-zero coordinates (float32)."""
    if norm == "l0":
        return count_changed(delta)
    return norm_of(delta, norm)  # type: ignore[arg-type]


def _keep_top(score: Array, k: Array) -> Array:
    """``[batch, n]`` bool: the ``k`` (``[batch]``, float holding integers) entries of
    each row of ``score`` with the largest values; ties go to the lower index."""
    order = jnp.argsort(-score, axis=1, stable=True)
    rank = jnp.argsort(order, axis=1, stable=True)
    return rank < k[:, None]


def _project(x_new: Array, x: Array, eps: Array, norm: str, lo: Array, hi: Array) -> Array:
    """Map ``x_new`` into the ball of radius ``eps`` (``[batch]``) around ``x``
    intersected with the box (see the module docstring)."""
    if norm == "l1":
        return project_l1_box(x_new, x, eps, lo, hi)
    delta = x_new - x
    if norm == "l0":
        c = clip_to_bounds(x_new, lo, hi) - x
        # Keeping coordinate i lowers ||x_new - x'||^2 by d_i^2 - (d_i - c_i)^2 = c_i (2 d_i - c_i).
        score = flat(c * (2.0 * delta - c))
        keep = _keep_top(score, jnp.floor(eps)).reshape(x.shape)
        return x + jnp.where(keep, c, 0.0)
    return clip_to_bounds(x + project(delta, eps, norm), lo, hi)  # type: ignore[arg-type]


def _cosine(start: Array, end: Array, i: Array, total: Array) -> Array:
    return end + (start - end) * (1.0 + jnp.cos(jnp.pi * i / total)) / 2.0


def _evaluate(s: _State, ops: _Operands, static: _Static) -> tuple[Array, Array, Array, Array]:
    """The iterate as the caller would get it, its logits, margin loss and gradient."""
    logits_fn = combine_model(static.model, ops.params)
    xa = as_returned(s.x_t, static.dtype, ops.lo, ops.hi)
    sign = 1.0 if static.targeted else -1.0

    def loss_fn(xi: Array) -> tuple[Array, tuple[Array, Array]]:
        z = logits_fn(xi).astype(jnp.float32)
        loss = sign * cw_margin(z, jax.nn.one_hot(ops.labels, z.shape[-1], dtype=jnp.float32))
        return jnp.sum(loss), (z, loss)

    (_, (z, loss)), g = jax.value_and_grad(loss_fn, has_aux=True)(xa)
    return xa, z, loss, g


def _record(s: _State, xa: Array, z: Array, ops: _Operands, static: _Static) -> tuple[_State, Array, Array]:
    """Keep ``xa`` where it is adversarial and smaller than the best so far."""
    hit = hits(z, ops.labels, static.targeted)
    size = _size(xa - ops.x, static.norm)
    better = hit & (size < s.best_norm)
    s = s._replace(
        best_norm=jnp.where(better, size, s.best_norm),
        best_x=select_rows(better, xa, s.best_x),
        found=s.found | hit,
    )
    return s, hit, size


def _fmn_body(i: Array, s: _State, ops: _Operands, static: _Static) -> _State:
    norm = static.norm
    xa, z, loss, g = _evaluate(s, ops, static)
    finite = finite_rows(z) & jnp.isfinite(loss) & jnp.all(jnp.isfinite(flat(g)), axis=1)
    g = select_rows(finite, g, 0.0)
    # Coordinates at a bound that the descent step would push out of the box.
    g = jnp.where(((xa <= ops.lo) & (g > 0)) | ((xa >= ops.hi) & (g < 0)), 0.0, g)
    s, hit, size = _record(s, xa, z, ops, static)
    i_f = i.astype(jnp.float32)
    alpha = _cosine(ops.alpha_init, ops.alpha_final, i_f, ops.total)
    gamma = _cosine(ops.gamma_init, ops.gamma_final, i_f, ops.total)
    if norm == "l0":
        shrink = jnp.minimum(jnp.minimum(s.eps - 1.0, jnp.floor(s.eps * (1.0 - gamma))), s.best_norm)
        grow = jnp.maximum(s.eps + 1.0, jnp.floor(s.eps * (1.0 + gamma)))
        eps = jnp.maximum(jnp.where(hit, shrink, grow), 1.0)
    else:
        dual = norm_of(g, _DUAL[norm])  # type: ignore[arg-type]
        # Distance to the linearised boundary; inf where the gradient vanishes. Measured
        # from the float32 iterate, which the ball constrains (a low-precision x rounds the
        # iterate inward, and the jump measured on the rounded point can be a fixed point),
        # and at least a factor 1 + gamma past it (a point exactly on the boundary, a tie
        # that is not adversarial, has |loss| = 0 and would be a fixed point too).
        current = _size(s.x_t - ops.x, norm)
        jump = jnp.maximum(current + jnp.abs(loss) / jnp.maximum(dual, _TINY), current * (1.0 + gamma))
        grown = jnp.where(s.found, s.eps * (1.0 + gamma), jump)
        eps = jnp.where(hit, jnp.minimum(s.eps * (1.0 - gamma), s.best_norm), grown)
    # No radius update from a point where the model or its gradient is not finite.
    eps = jnp.minimum(jnp.where(finite, eps, s.eps), ops.worst)
    step = per_example(alpha, s.x_t) * steepest_direction(g, "l2")
    x_t = _project(s.x_t - step, ops.x, eps, norm, ops.lo, ops.hi)
    return s._replace(x_t=x_t, eps=eps)


class _Search(NamedTuple):
    lower: Array  # [batch] largest beta known not to be adversarial
    upper: Array  # [batch] smallest beta known to be adversarial


class _SearchOperands(NamedTuple):
    params: Any
    x: Array
    start: Array
    labels: Array
    lo: Array
    hi: Array


def _mid_point(x: Array, start: Array, beta: Array, norm: str) -> Array:
    """The point :math:`m(\\beta)` between ``x`` (``beta = 0``) and ``start`` (``beta = 1``)."""
    delta = start - x
    b = per_example(beta, x)
    if norm == "l2":
        return x + b * delta
    top = per_example(norm_of(delta, "linf"), x)
    if norm == "linf":
        return x + jnp.clip(delta, -b * top, b * top)
    if norm == "l1":
        return x + jnp.sign(delta) * jnp.maximum(jnp.abs(delta) - (1.0 - b) * top, 0.0)
    k = jnp.ceil(beta * _size(delta, "l0"))
    keep = _keep_top(flat(jnp.abs(delta)), k).reshape(x.shape)
    return x + jnp.where(keep, delta, 0.0)


def _is_hit(ops: _SearchOperands, static: _Static, point: Array) -> Array:
    xa = as_returned(point, static.dtype, ops.lo, ops.hi)
    z = combine_model(static.model, ops.params)(xa).astype(jnp.float32)
    return hits(z, ops.labels, static.targeted)


def _search_body(i: Array, s: _Search, ops: _SearchOperands, static: _Static) -> _Search:
    del i
    beta = midpoint(s.lower, s.upper)
    hit = _is_hit(ops, static, _mid_point(ops.x, ops.start, beta, static.norm))
    return _Search(*narrow(s.lower, s.upper, beta, hit))


@functools.partial(jit, static_argnames=("static",))
def _search_result(ops: _SearchOperands, upper: Array, *, static: _Static) -> Array:
    """The bisection's smallest adversarial point, or ``x`` where the start is not adversarial."""
    mid = _mid_point(ops.x, ops.start, upper, static.norm)
    return select_rows(_is_hit(ops, static, mid), mid, ops.x)


@functools.partial(jax.jit, static_argnames=("norm",))
def _init_state(x: Array, x_t: Array, lo: Array, hi: Array, *, norm: str) -> tuple[_State, Array]:
    """The loop's first state, and the largest norm of a perturbation inside the box."""
    b = x.shape[0]
    if norm == "l0":
        worst = jnp.full((b,), float(math.prod(x.shape[1:])), jnp.float32)
        eps = jnp.maximum(_size(x_t - x, "l0"), 1.0)
    else:
        worst = norm_of(jnp.broadcast_to(jnp.maximum(x - lo, hi - x), x.shape), norm)  # type: ignore[arg-type]
        eps = jnp.full((b,), jnp.inf, jnp.float32)
    none = jnp.full((b,), jnp.inf, jnp.float32)
    return _State(x_t=x_t, eps=eps, best_norm=none, best_x=x, found=jnp.zeros((b,), bool)), worst


def _check_fmn_norm(norm: Any) -> str:
    if isinstance(norm, str) and norm.lower() == "l0":
        return "l0"
    try:
        return check_norm(norm)
    except ValueError:
        raise ValueError(
            f"norm must be one of ('l0', 'l1', 'l2', 'linf') for fmn (case-insensitive), got {norm!r}"
        ) from None


@overload
def fmn(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    norm: FMNNorm = "l2",
    steps: int = 100,
    alpha_init: ArrayLike = 1.0,
    alpha_final: ArrayLike | None = None,
    gamma_init: ArrayLike = 0.05,
    gamma_final: ArrayLike = 0.001,
    starting_points: ArrayLike | None = None,
    binary_search_steps: int = 10,
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
    return_info: Literal[False] = False,
) -> Array: ...


@overload
def fmn(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    norm: FMNNorm = "l2",
    steps: int = 100,
    alpha_init: ArrayLike = 1.0,
    alpha_final: ArrayLike | None = None,
    gamma_init: ArrayLike = 0.05,
    gamma_final: ArrayLike = 0.001,
    starting_points: ArrayLike | None = None,
    binary_search_steps: int = 10,
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
    return_info: Literal[True],
) -> AttackResult: ...


@overload
def fmn(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    norm: FMNNorm = "l2",
    steps: int = 100,
    alpha_init: ArrayLike = 1.0,
    alpha_final: ArrayLike | None = None,
    gamma_init: ArrayLike = 0.05,
    gamma_final: ArrayLike = 0.001,
    starting_points: ArrayLike | None = None,
    binary_search_steps: int = 10,
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult: ...


def fmn(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    norm: FMNNorm = "l2",
    steps: int = 100,
    alpha_init: ArrayLike = 1.0,
    alpha_final: ArrayLike | None = None,
    gamma_init: ArrayLike = 0.05,
    gamma_final: ArrayLike = 0.001,
    starting_points: ArrayLike | None = None,
    binary_search_steps: int = 10,
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult:
    r"""Fast Minimum-Norm attack (Pintor et al., NeurIPS 2021): the smallest perturbation found.

    Runs the iteration of the module docstring for ``steps`` steps and returns,
    per example, the adversarial iterate of smallest norm (L0: fewest changed
    coordinates) among all those visited. There is no eps: the radius adapts.
    Examples never fooled are returned unchanged (:func:`jaxadv.is_adversarial`
    then reports them as failures); an example misclassified at ``x`` is returned
    as ``x``. A point where the logits or the gradient are not finite is never a
    success and changes neither the radius nor the iterate (so an example whose
    logits are not finite at ``x`` is returned unchanged). An empty batch is
    returned as it is.

    Args:
      logits_fn: model ``x -> logits [batch, C]``.
      x: ``[batch, ...]`` clean inputs inside ``bounds``.
      y: ``[batch]`` integer labels or ``[batch, C]`` one-hot (targets when
        ``targeted``); ``None``: the model's predictions.
      key: accepted and ignored: the attack draws no random numbers (see
        :doc:`/conventions`).
      norm: ``"l0"``, ``"l1"``, ``"l2"`` or ``"linf"`` (static; case-insensitive).
      steps: number of gradient steps :math:`K` (static).
      alpha_init, alpha_final: step size at the first and last step, scalars or
        ``[batch]`` (traced); ``alpha_final=None`` means ``alpha_init / 100``.
        In the units of ``x`` (the defaults suit inputs in ``[0, 1]``).
      gamma_init, gamma_final: relative change of the radius at the first and
        last step, scalars or ``[batch]`` (traced).
      starting_points: optional ``[batch, ...]`` adversarial points inside
        ``bounds`` to start from (see the module docstring); ``None``: start at ``x``.
      binary_search_steps: bisection steps towards ``x`` from ``starting_points``
        (static; unused without them).
      targeted: make the model predict ``y``.
      bounds: ``(lo, hi)``, scalars or arrays broadcasting against ``x``.
      loop: ``"auto"``, ``"fori"``, ``"compiled"`` or ``"host"`` (see :mod:`jaxadv.engine`).
      return_info: return an :class:`jaxadv.AttackResult` ``(x_adv, success, None)``
        instead of the array (as every attack does).

    Returns:
      The adversarial batch, shape and dtype of ``x``.
    """
    norm_c = _check_fmn_norm(norm)
    steps = check_steps(steps)
    binary_search_steps = check_steps(binary_search_steps, "binary_search_steps")
    p = prepare(logits_fn, x, y, bounds=bounds, targeted=targeted)
    if p.empty:  # the model is not called (a model that flattens with reshape(0, -1) cannot be)
        out = p.finalize(p.x)
        return AttackResult(out, jnp.zeros((0,), bool), None) if return_info else out
    labels = p.labels if p.labels.ndim == 1 else jnp.argmax(p.labels, axis=-1).astype(jnp.int32)
    b = p.x.shape[0]

    def schedule_end(value: ArrayLike, name: str) -> Array:
        return check_batch_array(check_finite(value, name, minimum=0.0), p.x, name)

    a_init = schedule_end(alpha_init, "alpha_init")
    a_final = a_init / 100.0 if alpha_final is None else schedule_end(alpha_final, "alpha_final")
    g_init = schedule_end(gamma_init, "gamma_init")
    g_final = schedule_end(gamma_final, "gamma_final")
    static = _Static(p.model, norm_c, targeted, p.dtype)

    x_t = p.x
    if starting_points is not None:
        start = jnp.asarray(starting_points)
        if start.shape != p.x.shape:
            raise ValueError(f"starting_points must have the shape of x {p.x.shape}, got {start.shape}")
        s_ops = _SearchOperands(p.params, p.x, jnp.asarray(start, jnp.float32), labels, p.lo, p.hi)
        s_ops = s_ops._replace(start=clip_to_bounds(s_ops.start, p.lo, p.hi))
        init = _Search(jnp.zeros((b,), jnp.float32), jnp.ones((b,), jnp.float32))
        found = iterate(_search_body, init, s_ops, steps=binary_search_steps, static=static, loop=loop)
        x_t = _search_result(s_ops, found.upper, static=static)
    state, worst = _init_state(p.x, x_t, p.lo, p.hi, norm=norm_c)
    ops = _Operands(
        p.params, p.x, labels, p.lo, p.hi, a_init, a_final, g_init, g_final, worst, jnp.float32(steps)
    )
    # One iteration more than the steps: it records the point left by the last step.
    state = iterate(_fmn_body, state, ops, steps=steps + 1, static=static, loop=loop)
    return p.output(p.finalize(state.best_x), targeted=targeted, return_info=return_info)
