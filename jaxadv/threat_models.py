r"""Threat models: the pieces every attack builds on, one set per norm.

A threat model is a norm :math:`\|\cdot\|_p` (``"linf"``, ``"l2"`` or ``"l1"``), a
radius :math:`\epsilon` and a box of valid inputs :math:`[lo, hi]`. An adversarial
example :math:`x'` for a clean :math:`x` must satisfy
:math:`\|x' - x\|_p \le \epsilon` and :math:`lo \le x' \le hi`.

Conventions used everywhere in the library:

* ``eps`` is measured in the *raw* input space, the space of ``x`` and of
  ``bounds`` (for example pixels in ``[0, 1]``), never in a normalised space.
* ``eps`` is a scalar or one value per example (shape ``[batch]``).
* Perturbations have the shape of ``x``: ``[batch, ...]``; norms are taken over
  all axes but the first.
* ``eps = inf`` is an unbounded ball: the feasible set is then the box alone.
* Norms, projections and directions stay finite for huge finite values: L2 sums
  of squares are taken after scaling each row by a power of two (exact, so the
  result is bit for bit the unscaled one whenever that one does not overflow).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv._core.rows import flat, per_example, select_rows
from jaxadv._core.search import narrow
from jaxadv.keys import draw_rows, fold_rows, row_keys, split_rows
from jaxadv.typing import Array, ArrayLike, Norm, PRNGKey
from jaxadv.validation import check_norm

_TINY = 1e-12
_F32_MAX = float(np.finfo(np.float32).max)


def row_sum(v: Array, axis: int = 1) -> Array:
    """Sum of ``v`` over ``axis`` in an order fixed by that axis's length alone.

    The default sums the rows of a ``[batch, n]`` array: ``[batch, n] -> [batch]``.

    Pairwise: the two halves along ``axis`` are added elementwise (an odd last
    element carried over) until one entry is left; the axis is removed.
    ``jnp.sum`` leaves the order of the additions to the compiler, which picks
    it from the whole array's shape (XLA:CPU does, for 64 or 3072 columns, say),
    so an example's sum could round differently in a batch of 8 and in a batch
    of 64. Here each example is summed the same way whatever the batch size:
    per-example norms, and so sharded attacks, match one device bit for bit. It
    costs about what ``jnp.sum`` does.
    """
    axis = axis % v.ndim

    def part(start: int, stop: int) -> Array:
        return jax.lax.slice_in_dim(v, start, stop, axis=axis)

    while v.shape[axis] > 1:
        n, half = v.shape[axis], v.shape[axis] // 2
        folded = part(0, half) + part(half, 2 * half)
        v = jnp.concatenate([folded, part(2 * half, n)], axis) if n % 2 else folded
    # Materialise the sums: fused into a consumer such as ``a / norm[:, None]``, the
    # whole fold would be recomputed for every element of ``a``.
    return jax.lax.optimization_barrier(jnp.squeeze(v, axis))


def _pow2_scale(a: Array) -> Array:
    """Per row of ``a [batch, n]``, a power of two ``s [batch, 1]`` with ``max|a| * s`` near 1.

    Multiplying by a power of two is exact (the exponent is kept in
    ``[-125, 125]``, so ``s`` is a normal float32 and ``a * s`` neither overflows
    nor flushes to zero), so sums of squares of ``a * s`` are those of ``a`` times
    ``s**2`` exactly, without overflowing for ``|a|`` up to the float32 maximum.
    Rows that are zero or hold a non-finite value get ``s = 1``.
    """
    m = jnp.max(jnp.abs(a), axis=1, keepdims=True)
    _, e = jnp.frexp(jnp.where(jnp.isfinite(m) & (m > 0), m, 1.0))
    return jnp.ldexp(jnp.ones_like(m), -jnp.clip(e, -125, 125))


def _l2(a: Array, scale: Array) -> Array:
    """``||a * scale||_2`` per row of ``a [batch, n]`` (``scale`` from :func:`_pow2_scale`)."""
    a = a * scale
    return jnp.sqrt(row_sum(a * a))


def norm_of(delta: Array, norm: Norm) -> Array:
    """Per-example norm of ``delta`` (``[batch, ...]`` -> ``[batch]``).

    The L2 norm is computed on the row scaled by a power of two, so it is finite
    whenever the true norm is (squares of entries above ~1e19 overflow float32).
    """
    norm = check_norm(norm)
    d = flat(delta).astype(jnp.float32)
    if norm == "linf":
        return jnp.max(jnp.abs(d), axis=1)
    if norm == "l2":
        scale = _pow2_scale(d)
        return _l2(d, scale) / scale[:, 0]
    return row_sum(jnp.abs(d))


def _project_l1(delta: Array, eps: Array) -> Array:
    """Euclidean projection onto the L1 ball (Duchi et al., 2008), per example.

    Computed on each row scaled by a power of two (exact), so that the cumulative
    sums of huge perturbations do not overflow."""
    v = flat(delta).astype(jnp.float32)  # sort/cumsum in float32, also for bfloat16 inputs
    v = jnp.clip(v, -_F32_MAX, _F32_MAX)
    scale = _pow2_scale(v)
    eps = jnp.broadcast_to(jnp.reshape(eps, (-1,)) if jnp.ndim(eps) else eps, (v.shape[0],))
    return (_project_l1_scaled(v * scale, eps * scale[:, 0]) / scale).reshape(delta.shape)


def _project_l1_scaled(v: Array, eps: Array) -> Array:
    a = jnp.abs(v)
    u = -jnp.sort(-a, axis=1)  # descending
    css = jnp.cumsum(u, axis=1)
    idx = jnp.arange(1, v.shape[1] + 1, dtype=v.dtype)
    # The condition holds exactly on a prefix of the sorted coordinates.
    rho = jnp.maximum(jnp.sum(u - (css - eps[:, None]) / idx > 0, axis=1), 1)
    theta = (jnp.take_along_axis(css, (rho - 1)[:, None], axis=1)[:, 0] - eps) / rho
    w = jnp.sign(v) * jnp.maximum(a - theta[:, None], 0.0)
    # One coordinate kept: its value is eps (a - (a - eps) loses eps when eps << a).
    top = a == u[:, :1]
    single = jnp.sign(v) * jnp.where(top, eps[:, None] / jnp.sum(top, axis=1, keepdims=True), 0.0)
    w = jnp.where((rho == 1)[:, None], single, w)
    inside = row_sum(a) <= eps
    return jnp.where(inside[:, None], v, w)


def project(delta: Array, eps: ArrayLike, norm: Norm) -> Array:
    r"""Project perturbations onto the ball :math:`\{d : \|d\|_p \le \epsilon\}`.

    * ``"linf"``: :math:`\mathrm{clip}(d, -\epsilon, \epsilon)`.
    * ``"l2"``: :math:`d \cdot \min(1, \epsilon / \|d\|_2)`.
    * ``"l1"``: the exact Euclidean projection onto the L1 ball (sort-based
      algorithm of Duchi et al., 2008).

    ``eps = inf`` leaves ``delta`` unchanged (for ``"l2"``/``"l1"``, infinite
    entries become the largest finite float32, so the result is finite).

    Args:
      delta: ``[batch, ...]`` perturbations.
      eps: scalar or ``[batch]`` radius, in raw input units.
      norm: ``"linf"``, ``"l2"`` or ``"l1"``.

    Returns:
      The projected perturbations, shape and dtype of ``delta``.
    """
    norm = check_norm(norm)
    eps_b = per_example(eps, delta)
    if norm == "linf":
        return jnp.clip(delta, -eps_b, eps_b).astype(delta.dtype)
    if norm == "l2":
        d = flat(jnp.clip(delta, -_F32_MAX, _F32_MAX).astype(jnp.float32))
        eps_r = jnp.broadcast_to(jnp.reshape(jnp.asarray(eps, jnp.float32), (-1, 1)), (d.shape[0], 1))
        # d * eps / ||d|| as (d s) * (eps / ||d s||): the same numbers (s a power of two)
        # without the overflow of ||d||^2 or a factor eps / ||d|| that flushes to 0.
        scale = _pow2_scale(d)
        n_s = _l2(d, scale)[:, None]
        inside = n_s <= eps_r * scale
        out = jnp.where(inside, d, d * scale * (eps_r / jnp.where(inside, 1.0, n_s)))
        return out.reshape(delta.shape).astype(delta.dtype)
    return _project_l1(delta, jnp.asarray(eps, jnp.float32)).astype(delta.dtype)


def cast_into_box(x: Array, dtype: Any, lo: Array, hi: Array) -> Array:
    """``x`` cast to ``dtype`` and clipped into ``[lo, hi]`` in that dtype.

    Bounds that ``dtype`` cannot represent are rounded inward, so that the result
    lies inside the float32 ``[lo, hi]`` exactly. This is how every attack casts
    its result back to the caller's dtype (:meth:`jaxadv.attacks.base.Problem.finalize`) and
    how iterative attacks round their iterates before testing them for success
    (:func:`jaxadv.success.as_returned`): one rule, so the two always agree.
    """
    out = x.astype(dtype)
    lo_d, hi_d = lo.astype(dtype), hi.astype(dtype)
    lo_d = jnp.where(lo_d.astype(jnp.float32) < lo, jnp.nextafter(lo_d, jnp.asarray(jnp.inf, dtype)), lo_d)
    hi_d = jnp.where(hi_d.astype(jnp.float32) > hi, jnp.nextafter(hi_d, jnp.asarray(-jnp.inf, dtype)), hi_d)
    return jnp.clip(out, lo_d, hi_d)


def clip_to_bounds(x: Array, lo: ArrayLike, hi: ArrayLike) -> Array:
    """Clip ``x`` into the box ``[lo, hi]`` (scalars or arrays broadcasting against ``x``)."""
    return jnp.clip(x, lo, hi)


def project_to_feasible(
    x_adv: Array, x: Array, eps: ArrayLike, norm: Norm, lo: ArrayLike, hi: ArrayLike
) -> Array:
    r"""Map ``x_adv`` into the feasible set :math:`B_\epsilon(x) \cap [lo, hi]`.

    ``"linf"`` and ``"l2"``: projects :math:`x' - x` onto the ball, then clips
    into the box. Because ``x`` itself lies in the box, clipping only shrinks each
    coordinate of the perturbation, so the result is in the ball *and* the box.
    For ``"linf"`` this is the exact projection onto the intersection (the
    constraints separate per coordinate); for ``"l2"`` it is a feasible point, the
    usual choice of PGD implementations. ``"l1"``: the exact Euclidean projection
    onto the intersection (:func:`project_l1_box`), the feasible set every L1
    attack of the library uses. Projecting onto the ball first and clipping
    after would waste budget: the clip removes mass that the ball's projection
    took from the coordinates left free, and the point can end strictly inside
    the ball.
    """
    if check_norm(norm) == "l1":
        return project_l1_box(x_adv, x, eps, lo, hi).astype(jnp.result_type(x_adv, x))
    return clip_to_bounds(x + project(x_adv - x, eps, norm), lo, hi)


def steepest_direction(grad: Array, norm: Norm, *, l1_sparsity: float = 0.05) -> Array:
    r"""Steepest-ascent direction of unit norm for a first-order model of the loss.

    :math:`d = \arg\max_{\|d\|_p \le 1} \langle g, d \rangle`:

    * ``"linf"``: :math:`\mathrm{sign}(g)`.
    * ``"l2"``: :math:`g / \|g\|_2`.
    * ``"l1"``: the exact maximiser puts all mass on :math:`\arg\max_i |g_i|`; as
      in sparse L1 descent (Tramèr & Boneh, 2019) we spread it over the top
      ``l1_sparsity`` fraction of coordinates by :math:`|g_i|` (at least one):
      :math:`d_i = \mathrm{sign}(g_i)/k` there and 0 elsewhere, so
      :math:`\|d\|_1 = 1`.

    A zero gradient gives a zero direction (never NaN); huge or infinite
    gradient entries give a finite direction (the L2 norm is taken on the row
    scaled by a power of two, infinities count as the largest float32).

    Args:
      grad: ``[batch, ...]`` gradients.
      norm: ``"linf"``, ``"l2"`` or ``"l1"``.
      l1_sparsity: fraction of coordinates moved by an L1 step (static).

    Returns:
      ``[batch, ...]`` directions, dtype of ``grad``.
    """
    norm = check_norm(norm)
    if norm == "linf":
        return jnp.sign(grad)
    g = flat(grad)
    if norm == "l2":
        g = jnp.clip(g.astype(jnp.float32), -_F32_MAX, _F32_MAX)
        # g / max(||g||, tiny), computed as (g s) / max(||g s||, tiny s): the same
        # numbers (s is a power of two), without squares that overflow.
        scale = _pow2_scale(g)
        d = g * scale / jnp.maximum(_l2(g, scale)[:, None], _TINY * scale)
        return d.reshape(grad.shape).astype(grad.dtype)
    if not 0.0 < l1_sparsity <= 1.0:
        raise ValueError(f"l1_sparsity must be in (0, 1], got {l1_sparsity}")
    k = max(1, int(round(l1_sparsity * g.shape[1])))
    a = jnp.abs(g)
    # A sort rather than lax.top_k, which a batch-sharded input would all-gather.
    kth = -jnp.sort(-a, axis=1)[:, k - 1 : k]
    mask = (a >= kth) & (a > 0)
    count = jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1)
    d = jnp.where(mask, jnp.sign(g), 0.0) / count
    return d.reshape(grad.shape).astype(grad.dtype)


def random_start(key: PRNGKey, shape: tuple[int, ...], eps: ArrayLike, norm: Norm) -> Array:
    r"""Sample perturbations uniformly from the ball of radius ``eps``.

    * ``"linf"``: :math:`d_i \sim U[-\epsilon, \epsilon]`.
    * ``"l2"``: a uniform direction times radius :math:`\epsilon u^{1/n}`, :math:`u\sim U[0,1]`.
    * ``"l1"``: the first :math:`n` of :math:`n+1` i.i.d. exponentials divided by
      their sum (uniform on the solid simplex), with random signs, times
      :math:`\epsilon`.

    Each example draws from its own key, so its perturbation does not depend on
    the other rows.

    Args:
      key: one PRNG key (row ``i`` then draws from ``fold_in(key, i)``) or a
        ``[batch]`` array of keys, one per example (:func:`jaxadv.keys.row_keys`).
      shape: ``[batch, ...]``.
      eps: scalar or ``[batch]`` radius.
      norm: ``"linf"``, ``"l2"`` or ``"l1"``.

    Returns:
      ``float32`` perturbations of the given shape (use a finite ``eps``; see
      :func:`random_feasible` for a start point that allows ``eps = inf``).
    """
    norm = check_norm(norm)
    b, n = shape[0], 1
    for s in shape[1:]:
        n *= s
    keys = row_keys(key, b)
    eps_f = per_example(eps, jnp.zeros((b, 1)))
    if norm == "linf":
        u = draw_rows(lambda k: jax.random.uniform(k, (n,), minval=-1.0, maxval=1.0), keys)
        return (u * eps_f).reshape(shape)
    k1, k2 = split_rows(keys)
    if norm == "l2":
        g = draw_rows(lambda k: jax.random.normal(k, (n,)), k1)
        g = g / jnp.maximum(norm_of(g, "l2")[:, None], _TINY)
        r = draw_rows(lambda k: jax.random.uniform(k, (1,)), k2) ** (1.0 / n)
        return (g * r * eps_f).reshape(shape)
    e = draw_rows(lambda k: jax.random.exponential(k, (n + 1,)), k1)
    simplex = e[:, :n] / row_sum(e)[:, None]
    signs = draw_rows(lambda k: jax.random.rademacher(k, (n,), dtype=jnp.float32), k2)
    return (simplex * signs * eps_f).reshape(shape)


def random_feasible(key: PRNGKey, x: Array, eps: Array, norm: Norm, lo: Array, hi: Array) -> Array:
    r"""A random start point of the feasible set :math:`B_\epsilon(x) \cap [lo, hi]`.

    ``project_to_feasible(x + random_start(...))`` for finite ``eps``; where ``eps``
    is infinite the feasible set is the box, and the start is uniform in it
    (coordinates with an infinite bound start at ``x``). ``key``: one key or
    ``[batch]`` keys, as in :func:`random_start`; each example draws from its own.
    """
    keys = row_keys(key, x.shape[0])
    eps = jnp.asarray(eps, jnp.float32)
    finite = jnp.isfinite(eps)
    ball = random_start(keys, x.shape, jnp.where(finite, eps, 0.0), norm)
    x0 = project_to_feasible(x + ball, x, eps, norm, lo, hi)
    row = x.shape[1:]
    u = draw_rows(lambda k: jax.random.uniform(k, row, jnp.float32), fold_rows(keys, 1))
    boxed = jnp.isfinite(lo) & jnp.isfinite(hi)
    in_box = jnp.where(boxed, jnp.where(boxed, lo, 0.0) + u * jnp.where(boxed, hi - lo, 0.0), x)
    return select_rows(finite, x0, in_box)


def step_along(step_size: ArrayLike, direction: Array) -> Array:
    """``step_size * direction`` per example, 0 where the direction is 0 (also for an
    infinite step size, which would otherwise give ``inf * 0 = NaN``)."""
    return jnp.where(direction == 0, 0.0, per_example(step_size, direction) * direction)


def unit_l1(grad: Array) -> Array:
    """``grad / max(||grad||_1, 1e-12)`` per example, finite for huge or infinite entries
    (computed on rows scaled by a power of two)."""
    g = flat(jnp.clip(grad.astype(jnp.float32), -_F32_MAX, _F32_MAX))
    scale = _pow2_scale(g)
    g = g * scale
    return (g / jnp.maximum(row_sum(jnp.abs(g))[:, None], _TINY * scale)).reshape(grad.shape)


def mask_blocked(grad: Array, x: Array, lo: ArrayLike, hi: ArrayLike) -> Array:
    """Zero the gradient coordinates whose ascent step would leave the box.

    Used before a sparse L1 step so that coordinates already at a bound (and
    pushed further out) do not absorb the whole step.
    """
    blocked = ((x >= hi) & (grad > 0)) | ((x <= lo) & (grad < 0))
    return jnp.where(blocked, 0.0, grad)


#: Bisection steps of :func:`project_l1_box`: each halves the bracket of the multiplier,
#: which starts as ``[0, max_i |y_i|]``; after 32 it is narrower than float32 resolves.
_L1_BISECTIONS = 32


@jax.jit
def project_l1_box(x_adv: Array, x: Array, eps: ArrayLike, lo: ArrayLike, hi: ArrayLike) -> Array:
    r"""The Euclidean projection of ``x_adv`` onto :math:`\{z : \|z - x\|_1 \le \epsilon,\ lo \le z \le hi\}`.

    With :math:`y = x' - x` and :math:`u_i` the room in the box along
    :math:`\mathrm{sign}(y_i)` (:math:`hi_i - x_i` or :math:`x_i - lo_i`), the
    problem separates per coordinate given the multiplier :math:`\lambda \ge 0`
    of the L1 constraint:
    :math:`\delta_i(\lambda) = \mathrm{sign}(y_i)\,\min(\max(|y_i| - \lambda, 0), u_i)`.
    :math:`\lambda = 0` when :math:`\|\delta(0)\|_1 \le \epsilon`; otherwise
    :math:`\phi(\lambda) = \|\delta(\lambda)\|_1` is piecewise linear and
    non-increasing with breakpoints :math:`|y_i|` and :math:`|y_i| - u_i`, and
    :math:`\lambda` solves :math:`\phi(\lambda) = \epsilon`. It is bracketed by
    bisection on :math:`[0, \max_i |y_i|]` (32 halvings, each one pass over the
    coordinates: no sort, whose XLA:CPU kernel made a ``[397, 64]`` projection
    4.6 times slower), then solved on the linear piece of :math:`\phi` at the bracket's
    middle, :math:`\lambda = (\sum_{C} u_i + \sum_{M} |y_i| - \epsilon) / |M|`
    with :math:`M` the coordinates moving with :math:`\lambda` there and
    :math:`C` those held at their room, and kept inside the bracket. Needs
    :math:`x` inside the box. Sums that overflow to ``inf`` lie past the
    crossing, so a finite ``eps`` still finds it; ``eps = inf`` gives the box
    clip of ``x_adv``.

    Args:
      x_adv: ``[batch, ...]`` points to project.
      x: ``[batch, ...]`` centres, inside ``[lo, hi]``.
      eps: radius, scalar or ``[batch]``.
      lo, hi: bounds broadcasting against ``x``.

    Returns:
      The projected points, float32, shape of ``x``.
    """
    xf = x.astype(jnp.float32)
    y = flat(jnp.clip(x_adv.astype(jnp.float32) - xf, -_F32_MAX, _F32_MAX))
    up = flat(jnp.broadcast_to(jnp.asarray(hi, jnp.float32) - xf, x.shape))
    down = flat(jnp.broadcast_to(xf - jnp.asarray(lo, jnp.float32), x.shape))
    a = jnp.abs(y)
    # For lambda >= 0 a room beyond |y_i| changes nothing: capping it keeps every
    # breakpoint finite (also for unbounded boxes) and >= 0.
    room = jnp.clip(jnp.where(y > 0, up, down), 0.0, a)
    b = a.shape[0]
    eps_b = jnp.broadcast_to(jnp.reshape(jnp.asarray(eps, jnp.float32), (-1,)), (b,))

    def phi(lam: Array) -> Array:
        return row_sum(jnp.clip(a - lam[:, None], 0.0, room))

    def middle(low: Array, high: Array) -> Array:
        # Not search.midpoint's 0.5 * (low + high): near the float32 maximum (|y_i| of an
        # infinite x_adv) the sum overflows.
        return low + 0.5 * (high - low)

    def halve(_: Array, bracket: tuple[Array, Array]) -> tuple[Array, Array]:
        low, high = bracket
        mid = middle(low, high)
        return narrow(low, high, mid, hit=~(phi(mid) > eps_b))  # hit: lambda <= mid

    start = (jnp.zeros((b,), jnp.float32), jnp.max(a, axis=1))
    low, high = jax.lax.fori_loop(0, _L1_BISECTIONS, halve, start)
    mid = middle(low, high)[:, None]
    moving = (a - room < mid) & (a > mid)
    held = a - room >= mid
    count = row_sum(moving.astype(jnp.float32))
    solved = (row_sum(jnp.where(held, room, 0.0)) + row_sum(jnp.where(moving, a, 0.0)) - eps_b) / jnp.maximum(
        count, 1.0
    )
    # phi is flat on the bracket without a moving coordinate: its upper end is feasible.
    lam = jnp.where((count > 0) & jnp.isfinite(solved), jnp.clip(solved, low, high), high)[:, None]
    inside = (row_sum(room) <= eps_b)[:, None]
    delta = jnp.sign(y) * jnp.where(inside, room, jnp.clip(a - lam, 0.0, room))
    # x + (hi - x) may round past hi: clip (it only shrinks the perturbation).
    return jnp.clip(xf + delta.reshape(x.shape), lo, hi)
