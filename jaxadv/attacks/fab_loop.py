"""The loop of :func:`jaxadv.fab` and :func:`jaxadv.fab_targeted` (the algorithm is described in
:mod:`jaxadv.attacks.fab`): the projection onto a hyperplane and the box, the step
toward the nearest linearised boundary, the final search along the segment, and the
runs over restarts and target classes."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxadv._core.compile import jit
from jaxadv._core.problem import Problem
from jaxadv._core.rows import flat, select_rows
from jaxadv._core.search import midpoint, narrow
from jaxadv.engine import iterate
from jaxadv.keys import draw_rows, fold_rows, row_keys
from jaxadv.losses import finite_rows
from jaxadv.models import combine_model
from jaxadv.success import as_returned, hits
from jaxadv.threat_models import norm_of, per_example, row_sum
from jaxadv.typing import Array, ArrayLike, Bounds, LoopMode, Norm, PRNGKey
from jaxadv.validation import check_key, check_norm, check_steps, is_traced, value_check

_DEFAULT_RADIUS = {"linf": 0.3, "l2": 1.0, "l1": 5.0}
_DUAL: dict[str, Norm] = {"linf": "l1", "l2": "l2", "l1": "linf"}
_TINY = 1e-30


def _norm(v: Array, norm: Norm) -> Array:
    """``[batch, ...] -> [batch]`` norms for comparisons inside the loop: the L2 norm is
    taken on each row divided by its largest entry (no overflow, and cheaper to compile
    than :func:`jaxadv.norm_of`, which the returned examples are measured with)."""
    a = jnp.abs(flat(v))
    m = jnp.max(a, axis=1)
    if norm == "linf":
        return m
    if norm == "l1":
        return row_sum(a)
    safe = jnp.where((m > 0) & jnp.isfinite(m), m, 1.0)
    return safe * jnp.sqrt(row_sum(jnp.square(a / safe[:, None])))


def _exclusive_cumsum(v: Array) -> Array:
    return jnp.cumsum(v, axis=1) - v


def _first_reaching(g: Array, target: Array) -> tuple[Array, Array]:
    """Per row of the non-decreasing ``g [m, n]``: the first index with ``g >= target``
    (``[m, 1]``) and whether there is one (``[m]``)."""
    reach = g >= target[:, None]
    return jnp.argmax(reach, axis=1)[:, None], jnp.any(reach, axis=1)


def _first_not_below(c: Array, a: Array, room: Array, useful: Array, need: Array) -> Array:
    """Per row, the smallest non-negative float ``h`` with ``g(h) >= need`` (``inf`` if
    none), ``g(h) = sum_i a_i min(h c_i, room_i)`` over the useful coordinates.

    A binary search over the bit patterns of the non-negative float32 numbers
    (ordered as their bit patterns are), 31 halvings of ``[0, inf]``: exact, and
    each halving one pass over the row. It replaces a sort of the row's
    breakpoints, which XLA:CPU runs at a small fraction of memory speed (a sort
    was half of an FAB-T step on a 28x28 CNN)."""

    def g(h: Array) -> Array:
        return row_sum(jnp.where(useful, a * jnp.minimum(h[:, None] * c, room), 0.0))

    def halve(_: Any, bounds: tuple[Array, Array]) -> tuple[Array, Array]:
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        reached = g(jax.lax.bitcast_convert_type(mid, jnp.float32)) >= need
        return jnp.where(reached, lo, mid + 1), jnp.where(reached, mid, hi)

    rows = need.shape[0]
    lo = jnp.zeros((rows,), jnp.int32)
    hi = jnp.full((rows,), 0x7F800000, jnp.int32)  # the bits of +inf
    _, hi = jax.lax.fori_loop(0, 31, halve, (lo, hi))
    return jax.lax.bitcast_convert_type(hi, jnp.float32)


def _project_flat(t: Array, w: Array, r: Array, lo: Array, hi: Array, norm: Norm) -> Array:
    r"""The step ``d [m, n]`` of :func:`project_hyperplane_box` for flat points ``t [m, n]``,
    normals ``w [m, n]``, required changes :math:`r = b - \langle w, t\rangle` ``[m]`` and
    bounds ``lo, hi [m, n]``.

    With :math:`\sigma_i = \mathrm{sign}(r\,w_i)`, every useful coordinate moves along
    :math:`\sigma_i` by :math:`m_i \in [0, u_i]` (:math:`u_i` the room to the box that
    way), contributing :math:`|w_i| m_i` to :math:`|r|`. The minimal-norm magnitudes are

    * L-inf: :math:`m_i = \min(\lambda, u_i)`;
    * L2: :math:`m_i = \min(\lambda |w_i|, u_i)` (the KKT conditions);
    * L1: full room on the coordinates of largest :math:`|w_i|` first, one partial
      coordinate, 0 elsewhere (a greedy LP solution);

    where :math:`\lambda \ge 0` solves :math:`\sum_i |w_i| m_i = |r|`: the left side
    is piecewise linear and non-decreasing in :math:`\lambda`, so once the piece
    holding the solution is known (which coordinates are saturated), :math:`\lambda`
    follows exactly. L-inf and L2 find the piece by a binary search over the
    float32 values of :math:`\lambda` (:func:`_first_not_below`); L1 by one sort of
    the coordinates by :math:`|w_i|` and cumulative sums. When even the whole box falls
    short (:math:`\sum_i |w_i| u_i < |r|`) every coordinate takes its full room.
    ``w`` is divided by its largest entry first (the same hyperplane), so huge
    gradients do not overflow.
    """
    scale = jnp.max(jnp.abs(w), axis=1)
    ok = (scale > 0) & jnp.isfinite(scale) & jnp.isfinite(r)
    safe = jnp.where(ok, scale, 1.0)
    w = jnp.where(ok[:, None], w / safe[:, None], 0.0)
    r = jnp.where(ok, r / safe, 0.0)
    need = jnp.abs(r)
    direction = jnp.sign(r)[:, None] * jnp.sign(w)
    room = jnp.maximum(jnp.where(direction > 0, hi - t, t - lo), 0.0)
    a = jnp.abs(w)
    useful = a > 0
    cap = jnp.where(useful, a * room, 0.0)  # most that coordinate can contribute to |r|
    if norm == "l1":
        order = jnp.argsort(-a, axis=1, stable=True)
        a_s, cap_s, room_s = (jnp.take_along_axis(v, order, axis=1) for v in (a, cap, room))
        # Where each coordinate went (a sort rather than a scatter: it partitions by row).
        back = jnp.argsort(order, axis=1)
        before = _exclusive_cumsum(cap_s)
        k, feasible = _first_reaching(before + cap_s, need)
        rest = need[:, None] - jnp.take_along_axis(before, k, axis=1)
        partial = rest / jnp.maximum(jnp.take_along_axis(a_s, k, axis=1), _TINY)
        pos = jnp.arange(a.shape[1])[None, :]
        mag_s = jnp.where(pos < k, room_s, jnp.where(pos == k, jnp.minimum(partial, room_s), 0.0))
        mag_s = jnp.where(feasible[:, None], mag_s, room_s)
        mag = jnp.take_along_axis(mag_s, back, axis=1)
    else:
        # lambda solves g(lambda) = |r| for the non-decreasing piecewise-linear
        # g(lambda) = sum_i |w_i| min(lambda c_i, u_i) (c_i = 1 for L-inf, |w_i| for L2).
        c = a if norm == "l2" else jnp.ones_like(a)
        knot = jnp.where(useful, room / jnp.where(useful, c, 1.0), jnp.inf)  # where coordinate i saturates
        slope = jnp.where(useful, a * c, 0.0)
        first = _first_not_below(c, a, room, useful, need)
        # The coordinates with knot < first are saturated at lambda, the others move.
        saturated = knot < first[:, None]
        before = row_sum(jnp.where(saturated, cap, 0.0))
        moving = row_sum(jnp.where(saturated, 0.0, slope))
        feasible = row_sum(cap) >= need
        lam = jnp.maximum((need - before) / jnp.maximum(moving, _TINY), 0.0)
        mag = jnp.minimum(lam[:, None] * c, room)
        mag = jnp.where(feasible[:, None], mag, room)
    return jnp.where(useful, direction * mag, 0.0)


def project_hyperplane_box(
    points: ArrayLike,
    w: ArrayLike,
    b: ArrayLike,
    *,
    norm: Norm,
    bounds: Bounds = (0.0, 1.0),
) -> Array:
    r"""The minimal-norm step from each point onto a hyperplane inside a box.

    Solves, per example,

    .. math::
        d^\star = \arg\min_d \|d\|_p \quad\text{s.t.}\quad \langle w, t + d\rangle = b,
        \quad lo \le t + d \le hi,

    exactly (the projections of FAB; AutoAttack's ``projection_linf``,
    ``projection_l2`` and ``projection_l1`` for the box ``[0, 1]``), for any box
    ``[lo, hi]`` containing ``t``. Where the box does not reach the hyperplane,
    the step to the box corner that gets closest to it (maximal
    :math:`\mathrm{sign}(b - \langle w, t\rangle) \langle w, d\rangle`) is
    returned instead. Batched and jit-able: one sort and cumulative sums per
    example, no loop.

    Args:
      points: ``[batch, ...]`` points ``t`` inside ``bounds``.
      w: ``[batch, ...]`` normals, shape of ``points``.
      b: ``[batch]`` offsets.
      norm: ``"linf"``, ``"l2"`` or ``"l1"`` (static).
      bounds: ``(lo, hi)``, scalars or arrays broadcasting against ``points``.

    Returns:
      ``d`` of shape ``[batch, ...]``, float32.
    """
    norm = check_norm(norm)
    t = jnp.asarray(points, jnp.float32)
    wv = jnp.asarray(w, jnp.float32)
    if t.ndim < 1 or wv.shape != t.shape:
        raise ValueError(f"w must have the shape of points {t.shape}, got {wv.shape}")
    bv = jnp.asarray(b, jnp.float32)
    if bv.shape != t.shape[:1]:
        raise ValueError(f"b must have shape [batch]=({t.shape[0]},), got {bv.shape}")
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise ValueError(f"bounds must be a pair (lo, hi), got {bounds!r}")
    lo = jnp.broadcast_to(jnp.asarray(bounds[0], jnp.float32), t.shape)
    hi = jnp.broadcast_to(jnp.asarray(bounds[1], jnp.float32), t.shape)
    return _project_points(t, wv, bv, lo, hi, norm=norm)


@functools.partial(jax.jit, static_argnames=("norm",))
def _project_points(t: Array, w: Array, b: Array, lo: Array, hi: Array, *, norm: Norm) -> Array:
    tf, wf = flat(t), flat(w)
    return _project_flat(tf, wf, b - row_sum(wf * tf), flat(lo), flat(hi), norm).reshape(t.shape)


class _State(NamedTuple):
    x1: Array  # current iterate
    best: Array  # smallest adversarial example found (x where none)
    best_norm: Array  # [batch] its norm (inf where none)


class _Operands(NamedTuple):
    params: Any
    x: Array  # clean inputs
    labels: Array  # [batch] int32
    classes: Array  # [batch, K] int32: the classes whose boundary with y is linearised
    lo: Array  # [batch, n] flat bounds
    hi: Array
    alpha_max: Array
    eta: Array
    beta: Array
    active: Array  # [batch] bool: may still change (clean input correct, not yet done)


class _Static(NamedTuple):
    model: Any
    norm: Norm
    dtype: Any


def _nearest_boundary(x1: Array, ops: _Operands, static: _Static) -> tuple[Array, Array]:
    """The linearised boundary of the closest class at ``x1``: ``(w [batch, n], f [batch])``
    with the boundary :math:`f + \\langle w, z - x_1\\rangle = 0`. Where the logits or
    their Jacobian are not finite, ``w = 0`` and ``f = 0`` (no step)."""
    logits_fn = combine_model(static.model, ops.params)

    def differences(xi: Array, yi: Array, ci: Array) -> tuple[Array, Array]:
        z = logits_fn(xi[None]).astype(jnp.float32)[0]
        return z[ci] - z[yi], z

    # One batched Jacobian [batch, K, ...] of the K logit differences.
    jac, z = jax.vmap(jax.jacrev(differences, has_aux=True))(x1, ops.labels, ops.classes)
    b, k = ops.classes.shape
    jac = jac.reshape(b, k, -1)
    f = jnp.take_along_axis(z, ops.classes, axis=1) - jnp.take_along_axis(z, ops.labels[:, None], axis=1)
    finite = finite_rows(z) & jnp.all(jnp.isfinite(jac.reshape(b, -1)), axis=1) & finite_rows(f)
    jac = jnp.where(finite[:, None, None], jac, 0.0)
    f = jnp.where(finite[:, None], f, 0.0)
    dual = _norm(jac.reshape(b * k, -1), _DUAL[static.norm]).reshape(b, k)
    dist = jnp.abs(f) / (1e-12 + dual)
    dist = jnp.where((ops.classes == ops.labels[:, None]) | jnp.isnan(dist), jnp.inf, dist)
    pick = jnp.argmin(dist, axis=1)[:, None]
    w = jnp.take_along_axis(jac, pick[:, :, None], axis=1)[:, 0]
    return w, jnp.take_along_axis(f, pick, axis=1)[:, 0]


def _fab_body(i: Array, s: _State, ops: _Operands, static: _Static) -> _State:
    """One FAB step (module docstring) for the whole batch."""
    del i
    norm, x0 = static.norm, ops.x
    b = x0.shape[0]
    w, f = _nearest_boundary(s.x1, ops, static)
    x1f, x0f = flat(s.x1), flat(x0)
    # Required change of <w, .> from x1 and from x0 to reach the boundary.
    r1 = -f
    r0 = -f - row_sum(w * (x0f - x1f))
    n = x1f.shape[1]

    def pair(a: Array, c: Array) -> Array:
        # [batch, 2, ...] merged to [2 batch, ...] with the batch axis major: under
        # batch sharding each example's two rows stay on its device.
        return jnp.stack([a, c], axis=1).reshape((2 * b, *a.shape[1:]))

    d = _project_flat(
        pair(x1f, x0f), pair(w, w), pair(r1, r0), pair(ops.lo, ops.lo), pair(ops.hi, ops.hi), norm
    )
    size = jnp.maximum(_norm(d, norm), 1e-8).reshape(b, 2)
    d = d.reshape(b, 2, n)
    alpha = jnp.minimum(size[:, 0] / (size[:, 0] + size[:, 1]), ops.alpha_max)[:, None]
    eta = ops.eta[:, None]
    x_new = (1.0 - alpha) * (x1f + eta * d[:, 0]) + alpha * (x0f + eta * d[:, 1])
    lo, hi = ops.lo.reshape(x0.shape), ops.hi.reshape(x0.shape)
    x_new = as_returned(jnp.clip(x_new.reshape(x0.shape), lo, hi), static.dtype, lo, hi)
    z = combine_model(static.model, ops.params)(x_new).astype(jnp.float32)
    hit = hits(z, ops.labels, False) & ops.active
    dist = _norm(x_new - x0, norm)
    better = hit & (dist < s.best_norm)
    back = x0 + per_example(ops.beta, x0) * (x_new - x0)
    return _State(
        x1=select_rows(hit, back, x_new),
        best=select_rows(better, x_new, s.best),
        best_norm=jnp.where(better, dist, s.best_norm),
    )


class _SearchState(NamedTuple):
    t_lo: Array  # [batch] largest fraction of the segment known not adversarial
    t_hi: Array  # [batch] smallest fraction known adversarial
    x_hi: Array  # the point at t_hi


class _SearchOperands(NamedTuple):
    params: Any
    x: Array
    end: Array  # adversarial end points of the segments
    found: Array  # [batch] bool: search this example
    labels: Array
    lo: Array
    hi: Array


class _SearchStatic(NamedTuple):
    model: Any
    dtype: Any


def _search_body(i: Array, s: _SearchState, ops: _SearchOperands, static: _SearchStatic) -> _SearchState:
    """One halving of :math:`[t_{lo}, t_{hi}]` along :math:`x_0 + t (x_{adv} - x_0)`."""
    del i
    mid = midpoint(s.t_lo, s.t_hi)
    x_mid = as_returned(ops.x + per_example(mid, ops.x) * (ops.end - ops.x), static.dtype, ops.lo, ops.hi)
    z = combine_model(static.model, ops.params)(x_mid).astype(jnp.float32)
    hit = hits(z, ops.labels, False) & ops.found
    t_lo, t_hi = narrow(s.t_lo, s.t_hi, mid, hit)
    return _SearchState(t_lo=t_lo, t_hi=t_hi, x_hi=select_rows(hit, x_mid, s.x_hi))


class _Setup(NamedTuple):
    """Per-call arrays shared by every run (from :func:`_setup`)."""

    clean_ok: Array  # [batch] bool: x is classified as y with finite logits (the attacked examples)
    lo: Array  # [batch, ...] bounds broadcast to x
    hi: Array
    eps: Array  # [batch]
    alpha_max: Array  # [batch]
    eta: Array
    beta: Array


@functools.partial(jit, static_argnames=("model",))
def _setup(
    params: Any,
    x: Array,
    labels: Array,
    lo: Array,
    hi: Array,
    eps: Array,
    hyper: tuple[Array, Array, Array],
    *,
    model: Any,
) -> _Setup:
    z = combine_model(model, params)(x).astype(jnp.float32)
    b = x.shape[0]
    return _Setup(
        finite_rows(z) & ~hits(z, labels, False),
        jnp.broadcast_to(lo, x.shape),
        jnp.broadcast_to(hi, x.shape),
        jnp.broadcast_to(eps, (b,)),
        *(jnp.broadcast_to(h, (b,)) for h in hyper),
    )


@functools.partial(jax.jit, static_argnames=("norm", "eps_mode", "random"))
def _begin_run(
    key: PRNGKey, x: Array, best_norm: Array, setup: _Setup, *, norm: Norm, eps_mode: bool, random: bool
) -> tuple[Array, Array]:
    r"""The start point of a run and the examples it may change.

    The start is ``x``, or (``random``) a point at distance :math:`\rho / 2` of it
    before clipping into the box: a uniform draw of ``[-1, 1]^n`` (L-inf) or a
    Gaussian (L2, L1) scaled to that norm, :math:`\rho` the radius of the module
    docstring, each example's from its own key (``key``: ``[batch]`` keys)."""
    found = jnp.isfinite(best_norm)
    done = (found & (best_norm <= setup.eps)) if eps_mode else jnp.zeros_like(found)
    active = setup.clean_ok & ~done
    if not random:
        return x, active
    default = jnp.float32(_DEFAULT_RADIUS[norm])
    if eps_mode:
        radius = jnp.where(jnp.isfinite(setup.eps), setup.eps, default)
    else:
        radius = jnp.minimum(best_norm, default)
    row = x.shape[1:]
    if norm == "linf":
        u = draw_rows(lambda k: jax.random.uniform(k, row, jnp.float32, -1.0, 1.0), key)
    else:
        u = draw_rows(lambda k: jax.random.normal(k, row, jnp.float32), key)
    u = u / per_example(jnp.maximum(_norm(u, norm), 1e-12), x)
    return jnp.clip(x + per_example(0.5 * radius, x) * u, setup.lo, setup.hi), active


@functools.partial(jax.jit, static_argnames=("norm", "eps_mode"))
def _finish(
    x: Array, best: Array, best_norm: Array, searched: Array, setup: _Setup, *, norm: Norm, eps_mode: bool
) -> tuple[Array, Array]:
    """The batch to return and which examples hold an adversarial example: the searched
    point where it is no farther from ``x`` than the best one, ``x`` where nothing
    counts. Norms are those of :func:`jaxadv.norm_of` (what a caller measures)."""
    found = setup.clean_ok & jnp.isfinite(best_norm)
    b = x.shape[0]
    # [batch, 2, ...] merged with the batch axis major (see _fab_body).
    pairs = jnp.stack([best - x, searched - x], axis=1).reshape((2 * b, *x.shape[1:]))
    both = norm_of(pairs, norm).reshape(b, 2)
    best_norm, searched_norm = both[:, 0], both[:, 1]
    shorter = found & (searched_norm <= best_norm)
    best = select_rows(shorter, searched, best)
    best_norm = jnp.where(shorter, searched_norm, best_norm)
    if eps_mode:
        found = found & (best_norm <= setup.eps)
    return select_rows(found, best, x), found


@functools.partial(jit, static_argnames=("model",))
def _class_order(params: Any, x: Array, *, model: Any) -> Array:
    """``[batch, C]`` int32: the classes by decreasing clean logit (a stable sort: ties
    go to the lower class index; NaN logits last)."""
    z = combine_model(model, params)(x).astype(jnp.float32)
    return jnp.argsort(-jnp.where(jnp.isnan(z), -jnp.inf, z), axis=1, stable=True).astype(jnp.int32)


def _check_hyper(value: ArrayLike, name: str, x: Array, upper: float | None) -> Array:
    """A scalar or ``[batch]`` hyperparameter in ``[0, upper]`` as float32."""
    v = jnp.asarray(value, jnp.float32)
    if v.ndim not in (0, 1) or (v.ndim == 1 and v.shape != (x.shape[0],)):
        raise ValueError(
            f"{name} must be a scalar or have shape [batch]=({x.shape[0]},), got shape {v.shape}"
        )
    if upper is None:
        value_check(jnp.all((v >= 0) & jnp.isfinite(v)), f"{name} must be >= 0 and finite, got {{v}}", v=v)
    else:
        value_check(jnp.all((v >= 0) & (v <= upper)), f"{name} must be in [0, {upper}], got {{v}}", v=v)
    return v


def _run_fab(
    p: Problem,
    key: PRNGKey,
    class_sets: list[Array],
    *,
    eps_mode: bool,
    steps: int,
    norm: Norm,
    num_restarts: int,
    alpha_max: ArrayLike,
    eta: ArrayLike,
    beta: ArrayLike,
    search_steps: int,
    loop: LoopMode,
) -> tuple[Array, Array]:
    """All runs (``num_restarts`` per entry of ``class_sets``), then the final search.

    Returns ``(x_adv, found)``: the float32 batch to return (``x`` where nothing
    counts) and which examples hold an adversarial example."""
    x = p.x
    key = row_keys(key, x.shape[0])
    hyper = (
        _check_hyper(alpha_max, "alpha_max", x, 1.0),
        _check_hyper(eta, "eta", x, None),
        _check_hyper(beta, "backward_factor", x, 1.0),
    )
    if x.shape[0] == 1:
        # XLA compiles a batch of one differently (its size-1 axes are simplified
        # away and the step's projection is fused otherwise), which rounds the
        # step differently in the last bit: one example runs as two copies, so
        # that its result is the one it gets in any larger batch.
        def two(a: Array) -> Array:
            return jnp.concatenate([a, a]) if a.ndim and a.shape[0] == 1 else a

        # (Bounds broadcast against the two rows as they did against the one.)
        pair = p._replace(x=two(x), labels=two(p.labels), eps=two(p.eps))
        x_adv, found = _run_fab(
            pair, two(key), [two(c) for c in class_sets], eps_mode=eps_mode, steps=steps, norm=norm,
            num_restarts=num_restarts, alpha_max=two(hyper[0]), eta=two(hyper[1]), beta=two(hyper[2]),
            search_steps=search_steps, loop=loop,
        )  # fmt: skip
        return x_adv[:1], found[:1]
    setup = _setup(p.params, x, p.labels, p.lo, p.hi, p.eps, hyper, model=p.model)
    static = _Static(p.model, norm, p.dtype)
    lo, hi = flat(setup.lo), flat(setup.hi)
    state = _State(x, x, jnp.full((x.shape[0],), jnp.inf, jnp.float32))
    runs = [(classes, r) for classes in class_sets for r in range(num_restarts)]
    for run, (classes, r) in enumerate(runs):
        x1, active = _begin_run(
            fold_rows(key, run),
            x,
            state.best_norm,
            setup,
            norm=norm,
            eps_mode=eps_mode,
            random=r > 0,
        )
        if not is_traced(active) and not bool(jnp.any(active)):
            break  # nothing left to change (outside jit only: the result is the same)
        ops = _Operands(
            p.params, x, p.labels, classes, lo, hi, setup.alpha_max, setup.eta, setup.beta, active
        )
        state = iterate(_fab_body, state._replace(x1=x1), ops, steps=steps, static=static, loop=loop)
    searched = state.best
    if search_steps:
        found = setup.clean_ok & jnp.isfinite(state.best_norm)
        ops_s = _SearchOperands(p.params, x, state.best, found, p.labels, setup.lo, setup.hi)
        ones = jnp.ones_like(state.best_norm)
        init = _SearchState(0.0 * ones, ones, state.best)
        searched = iterate(
            _search_body, init, ops_s, steps=search_steps, static=_SearchStatic(p.model, p.dtype), loop=loop
        ).x_hi
    return _finish(x, state.best, state.best_norm, searched, setup, norm=norm, eps_mode=eps_mode)


def _check_common(
    norm: Norm, steps: int, num_restarts: int, search_steps: int, key: PRNGKey
) -> tuple[Norm, int]:
    norm = check_norm(norm)
    steps = check_steps(steps)
    check_steps(num_restarts, "num_restarts")
    if isinstance(search_steps, bool) or not isinstance(search_steps, int) or search_steps < 0:
        raise ValueError(f"search_steps must be a Python int >= 0 (it is static), got {search_steps!r}")
    if key is None:
        raise ValueError("key is required for the random restarts (pass key=jax.random.key(0))")
    check_key(key, per_example=True)
    return norm, steps
