r"""The Square Attack (Andriushchenko et al., 2020): score-based random search, L-inf, L2 and L1.

:func:`square` queries the model's scores only, under the counting and
stopping rules of :mod:`jaxadv.attacks.blackbox`. The L1 version is the one
AutoAttack added for its L1 evaluation (Croce & Hein, 2021, "Mind the box").
"""

from __future__ import annotations

import functools
from typing import Any, Literal, NamedTuple, overload

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv._core.compile import jit
from jaxadv._core.problem import prepare
from jaxadv._core.rows import select_rows
from jaxadv.attacks.blackbox import (
    check_finite_eps,
    check_key,
    check_queries,
    empty_result,
    finish,
)
from jaxadv.callables import reraise_callable_errors
from jaxadv.compose.bookkeeping import QueryCount, charge
from jaxadv.engine import iterate
from jaxadv.keys import draw_rows, row_keys, split_rows
from jaxadv.losses import as_onehot, cross_entropy, cw_margin, finite_rows
from jaxadv.models import combine_model
from jaxadv.success import AttackResult, hits, stop_mask
from jaxadv.threat_models import norm_of, per_example, project_l1_box, row_sum
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, LoopMode, Norm, PRNGKey
from jaxadv.validation import check_norm

__all__ = ["square"]

_TINY = 1e-12
# L1 candidates are projected onto the ball of radius eps * (1 - 1e-6), as in
# AutoAttack: strictly inside, whatever the rounding of the projection.
_L1_SHRINK = 1.0 - 1e-6
# Iterations (out of 10,000) after which the Square Attack halves p (Andriushchenko et al., 2020).
_P_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def image_layout(x: Array, channel_axis: int, attack: str = "square") -> str:
    """The layout of image batch ``x``: ``"nhwc"``, ``"nchw"`` or ``"nhw"`` (shared by
    the attacks that work on pixels: Square, Sparse-RS)."""
    if x.ndim == 4:
        if channel_axis in (-1, 3):
            return "nhwc"
        if channel_axis == 1:
            return "nchw"
        raise ValueError(f"channel_axis must be -1 (NHWC) or 1 (NCHW), got {channel_axis}")
    if x.ndim == 3:
        return "nhw"
    raise ValueError(
        f"{attack} needs image-shaped inputs [batch, H, W, C], [batch, C, H, W] or [batch, H, W]; "
        f"got shape {x.shape} (reshape flat features to an image, e.g. inside from_callable's fn)"
    )


def to_nhwc(a: Array, layout: str) -> Array:
    if layout == "nchw":
        return jnp.transpose(a, (0, 2, 3, 1))
    if layout == "nhw":
        return a[..., None]
    return a


def from_nhwc(a: Array, layout: str) -> Array:
    if layout == "nchw":
        return jnp.transpose(a, (0, 3, 1, 2))
    if layout == "nhw":
        return a[..., 0]
    return a


# --- Square Attack -------------------------------------------------------------


def _p_of(i: Array, budget: Array, p_init: float) -> Array:
    """The square-size fraction at iteration ``i``: ``p_init`` halved at each
    threshold of the schedule passed (thresholds rescaled to a budget of 10,000)."""
    it = jnp.floor(i.astype(jnp.float32) / budget * 10000.0)
    halvings = jnp.sum(jnp.stack([it > t for t in _P_SCHEDULE]).astype(jnp.float32))
    return jnp.asarray(p_init, jnp.float32) * jnp.power(0.5, halvings)


def _side(i: Array, budget: Array, p_init: float, h: int, w: int, norm: str) -> Array:
    """Side ``s`` of the square at iteration ``i`` (traced int32): at least 1 (L-inf),
    an odd number at least 3 (L2, L1)."""
    p = _p_of(i, budget, p_init)
    s = jnp.round(jnp.sqrt(p * h * w)).astype(jnp.int32)
    if norm == "linf":
        s = jnp.maximum(s, 1)
    else:
        s = jnp.maximum(s, 3)
        s = s + (s % 2 == 0)
    return jnp.minimum(s, min(h, w))


def _window(u: Array, h: int, w: int, s: Array) -> tuple[Array, Array, Array]:
    """Per-example random top-left corners of an ``s x s`` window; returns the
    window's ``[b, H, W]`` mask and the local coordinates ``(r, c)`` of each pixel.
    ``u``: ``[b, 2]`` uniform draws in ``[0, 1)``.

    As in the reference implementations, the corner is drawn from
    ``[0, max(H - s, 1))`` (the last offset ``H - s`` is never drawn when ``s < H``).
    """
    vh = jnp.floor(u[:, 0, None, None] * jnp.maximum(h - s, 1)).astype(jnp.int32)
    vw = jnp.floor(u[:, 1, None, None] * jnp.maximum(w - s, 1)).astype(jnp.int32)
    r = jnp.arange(h, dtype=jnp.int32)[None, :, None] - vh
    c = jnp.arange(w, dtype=jnp.int32)[None, None, :] - vw
    inside = (r >= 0) & (r < s) & (c >= 0) & (c < s)
    return inside, r, c


def _inverse_powers(n: int, power: int) -> Array:
    """``T[k] = sum_{j=1}^{k} 1/j^power`` for ``k = 0..n``."""
    return jnp.asarray(np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1) ** power)]), jnp.float32)


def _inverse_squares(n: int) -> Array:
    """``T[k] = sum_{j=1}^{k} 1/j^2`` for ``k = 0..n``: the L2 pattern's weights."""
    return _inverse_powers(n, 2)


#: The nested rectangles' weights decay as ``1 / k**p``: ``p = 2`` in L2, ``p = 4`` in L1
#: (as in AutoAttack's L1 Square, which concentrates the mass nearer the centre).
_PATTERN_POWER = {"l2": 2, "l1": 4}


def _rectangle(r: Array, c: Array, a: Array, bw: Array, table: Array) -> Array:
    r"""The Square Attack's nested-rectangles pattern on an ``a x bw`` rectangle at
    local coordinates ``(r, c)``: :math:`\sum_{k=d}^{K-1} (k+1)^{-p}` with ``d`` the
    Chebyshev distance to the centre ``(a//2, bw//2)``, ``K = max(a//2, bw//2) + 1`` and
    ``table`` the partial sums of :math:`j^{-p}` (:func:`_inverse_powers`); zero outside
    the rectangle."""
    d = jnp.maximum(jnp.abs(r - a // 2), jnp.abs(c - bw // 2))
    k = jnp.maximum(a // 2, bw // 2) + 1
    inside = (r >= 0) & (r < a) & (c >= 0) & (c < bw)
    n = table.shape[0] - 1
    value = table[jnp.clip(k, 0, n)] - table[jnp.clip(d, 0, n)]
    return jnp.where(inside & (d < k), value, 0.0)


def _eta(r: Array, c: Array, s: Array, flip: Array, table: Array, norm: str = "l2") -> Array:
    """The Square Attack's ``s x s`` update pattern, of unit norm (L2, or L1 with
    ``norm="l1"``) per example: nested rectangles of opposite signs in the two
    halves, each half of unit norm, randomly transposed. ``table``: the weights'
    partial sums (:func:`_inverse_powers` with :data:`_PATTERN_POWER`).

    ``r, c``: ``[b, H, W]`` local coordinates; ``flip``: ``[b, 1, 1]`` bool."""
    r, c = jnp.where(flip, c, r), jnp.where(flip, r, c)
    half = s // 2
    top = _rectangle(r, c, half, s, table)
    bottom = _rectangle(r - half, c, s - half, s, table)

    def unit(a: Array) -> Array:
        flat = a.reshape(a.shape[0], -1)
        n = row_sum(jnp.abs(flat)) if norm == "l1" else jnp.sqrt(row_sum(flat * flat))
        return a / jnp.maximum(n[:, None, None], _TINY)

    return unit(unit(top) - unit(bottom))


def _spatial_norm(a: Array, norm: str = "l2") -> Array:
    """L2 (or L1) norm over the two spatial axes of ``[b, H, W, C]``, per channel:
    ``[b, 1, 1, C]``.

    Summed with :func:`jaxadv.threat_models.row_sum`, so a row's value does not depend on the
    batch size (or on how a sharded batch is split)."""
    b, h, w, ch = a.shape
    if norm == "l1":
        return row_sum(jnp.abs(a).reshape(b, h * w, ch)).reshape(b, 1, 1, ch)
    return jnp.sqrt(row_sum((a * a).reshape(b, h * w, ch))).reshape(b, 1, 1, ch)


def _unit_l2(d: Array) -> Array:
    return d / (per_example(norm_of(d, "l2"), d) + _TINY)


def _square_objectives(z: Array, labels: Array, targeted: bool) -> tuple[Array, Array]:
    r"""``(hit, loss)``: ``hit`` is success (:func:`jaxadv.success.hits`); the attack
    minimises ``loss``, the margin :math:`z_y - \max_{j\ne y} z_j` (untargeted) or the
    cross-entropy of the target (targeted), NaN where the scores are not finite (such
    a point is never an improvement)."""
    onehot = as_onehot(labels, z.shape[-1])
    loss = cross_entropy(z, onehot) if targeted else -cw_margin(z, onehot)
    return hits(z, labels, targeted), jnp.where(finite_rows(z), loss, jnp.nan)


class _SquareState(NamedTuple):
    """``x_best``: the best point so far, of loss ``loss``; ``tally``: the books of a
    score-based attack (:class:`jaxadv.compose.QueryCount`: each example's key chain,
    whether it has stopped, a success or clean scores not finite, and the
    evaluations it spent)."""

    x_best: Array
    loss: Array
    tally: QueryCount


class _SquareOperands(NamedTuple):
    params: Any
    x: Array
    labels: Array
    lo: Array
    hi: Array
    eps: Array
    budget: Array  # float32 query budget: the schedule of square sizes is relative to it


class _SquareStatic(NamedTuple):
    model: Any
    norm: str
    targeted: bool
    p_init: float
    layout: str


def _square_body(i: Array, state: _SquareState, ops: _SquareOperands, static: _SquareStatic) -> _SquareState:
    x, norm, layout = ops.x, static.norm, static.layout
    chain, k_draw = split_rows(state.tally.key)
    xs = to_nhwc(x, layout)
    b, h, w, ch = xs.shape
    # One draw per example and iteration, from the example's key: two window
    # corners, a transpose coin and the signs.
    u = draw_rows(lambda k: jax.random.uniform(k, (5 + ch,)), k_draw)
    s = _side(i, ops.budget, static.p_init, h, w, norm)
    inside, r, c = _window(u[:, 0:2], h, w, s)
    m1 = inside[..., None].astype(jnp.float32)
    signs = jnp.where(u[:, 5:, None, None] < 0.5, -1.0, 1.0).transpose(0, 2, 3, 1)
    eps_b = per_example(ops.eps, xs)
    if norm == "linf":
        best = to_nhwc(state.x_best, layout)
        cand = jnp.where(m1 > 0, best + 2.0 * eps_b * signs, best)  # no inf * 0 for eps = inf
        cand = jnp.clip(cand, xs - eps_b, xs + eps_b)
    else:
        delta = to_nhwc(state.x_best, layout) - xs
        inside2, _, _ = _window(u[:, 2:4], h, w, s)
        m2 = inside2[..., None].astype(jnp.float32)
        union = jnp.maximum(m1, m2)
        n_win1 = _spatial_norm(delta * m1, norm)
        n_union = _spatial_norm(delta * union, norm)
        n_image = per_example(norm_of(delta, "l1" if norm == "l1" else "l2"), delta)
        flip = (u[:, 4] < 0.5)[:, None, None]
        table = _inverse_powers(max(h, w) + 1, _PATTERN_POWER[norm])
        pattern = _eta(r, c, s, flip, table, norm)[..., None]
        new = pattern * signs + delta * m1 / (n_win1 + _TINY)
        new_norm = _spatial_norm(new, norm)
        if norm == "l2":
            room = jnp.sqrt(jnp.maximum(eps_b**2 - n_image**2, 0.0) / ch + n_union**2)
        else:
            # AutoAttack's L1 rule: each channel's window takes the mass it held in both
            # windows plus a share of the unused budget, times the channel count; the
            # projection below brings the whole perturbation back into the ball.
            room = (jnp.maximum(eps_b - n_image, 0.0) / ch + n_union) * ch
        new = new / (new_norm + _TINY) * room
        delta = delta * (1.0 - m2) * (1.0 - m1) + new * m1
        cand = xs + _unit_l2(delta) * eps_b if norm == "l2" else xs + delta
    cand = from_nhwc(cand, layout)
    if norm == "l1":
        cand = project_l1_box(cand, x, ops.eps * _L1_SHRINK, ops.lo, ops.hi)
    cand = jnp.clip(cand, ops.lo, ops.hi)
    z = combine_model(static.model, ops.params)(cand).astype(jnp.float32)
    hit, loss = _square_objectives(z, ops.labels, static.targeted)
    count, active = charge(state.tally, chain, z, ops.labels, static.targeted, 1)
    lower = active & (loss < state.loss)
    # A success is kept even when its loss is not lower (the targeted loss is not the margin).
    keep = lower | (active & hit)
    return _SquareState(
        x_best=select_rows(keep, cand, state.x_best), loss=jnp.where(lower, loss, state.loss), tally=count
    )


@functools.partial(jit, static_argnames=("model", "norm", "targeted", "layout"))
def _square_init(
    key: PRNGKey,
    params: Any,
    x: Array,
    labels: Array,
    lo: Array,
    hi: Array,
    eps: Array,
    *,
    model: Any,
    norm: str,
    targeted: bool,
    layout: str,
) -> _SquareState:
    """Evaluate the clean input (query 1), then the initial point (query 2): vertical
    stripes of ``+-eps`` (L-inf), a grid of L2 patterns rescaled to norm ``eps`` (L2),
    or a grid of L1 patterns (each of L1 norm 1 per channel) projected onto the L1
    ball and the box (L1)."""
    logits_fn = combine_model(model, params)
    key, k0, k1 = split_rows(key, 3)
    z0 = logits_fn(x).astype(jnp.float32)
    _, loss0 = _square_objectives(z0, labels, targeted)
    xs = to_nhwc(x, layout)
    b, h, w, ch = xs.shape
    eps_b = per_example(eps, xs)
    if norm == "linf":
        init = xs + eps_b * draw_rows(lambda k: jax.random.rademacher(k, (1, w, ch), dtype=jnp.float32), k0)
    else:
        # Tiles of side h // 5 starting at (h - 5 s) // 2, each a pattern of the norm
        # with its own sign.
        s0 = max(h // 5, 1)
        start = (h - s0 * 5) // 2
        table = _inverse_powers(max(h, w) + 1, _PATTERN_POWER[norm])
        rows = np.arange(h) - start
        cols = np.arange(w) - start
        tr, tc = rows // s0, cols // s0
        valid = (
            (rows >= 0)[:, None] & (cols >= 0)[None, :] & (tr < h // s0)[:, None] & (tc < w // s0)[None, :]
        )
        tile = np.where(valid, tr[:, None] * (w // s0 + 1) + tc[None, :], 0)
        n_tiles = (h // s0 + 1) * (w // s0 + 1)
        # One tile's pattern, of unit norm (the L1 start is not rescaled: each tile
        # must carry L1 mass 1, as in AutoAttack), repeated over the grid.
        r0, c0 = np.meshgrid(np.arange(s0), np.arange(s0), indexing="ij")
        flat = jnp.zeros((1, 1, 1), bool)
        one = _eta(jnp.asarray(r0)[None], jnp.asarray(c0)[None], jnp.asarray(s0), flat, table, norm)
        pattern = jnp.where(jnp.asarray(valid), one[0][np.ix_(rows % s0, cols % s0)], 0.0)
        tile_signs = draw_rows(lambda k: jax.random.rademacher(k, (n_tiles, ch), dtype=jnp.float32), k0)
        delta = pattern[None, :, :, None] * tile_signs[:, jnp.asarray(tile.reshape(-1))].reshape(b, h, w, ch)
        init = xs + _unit_l2(delta) * eps_b if norm == "l2" else xs + delta
    init = from_nhwc(init, layout)
    if norm == "l1":
        init = project_l1_box(init, x, eps * _L1_SHRINK, lo, hi)
    init = jnp.clip(init, lo, hi)
    z1 = logits_fn(init).astype(jnp.float32)
    hit1, loss1 = _square_objectives(z1, labels, targeted)
    # Clean success, or clean scores not finite: stop after query 1 at x.
    clean_stop = stop_mask(z0, labels, targeted)
    # A start point whose scores are not finite is not taken: the search starts at x.
    take_init = ~clean_stop & finite_rows(z1)
    return _SquareState(
        x_best=select_rows(take_init, init, x),
        loss=jnp.where(take_init, loss1, loss0),
        tally=QueryCount(k1, clean_stop | (take_init & hit1), jnp.where(clean_stop, 1, 2).astype(jnp.int32)),
    )


@overload
def square(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    queries: int = 1000,
    norm: Norm = "linf",
    p_init: float | None = None,
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    channel_axis: int = -1,
    loop: LoopMode = "auto",
    return_info: Literal[False] = False,
) -> Array: ...


@overload
def square(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    queries: int = 1000,
    norm: Norm = "linf",
    p_init: float | None = None,
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    channel_axis: int = -1,
    loop: LoopMode = "auto",
    return_info: Literal[True],
) -> AttackResult: ...


@overload
def square(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    queries: int = 1000,
    norm: Norm = "linf",
    p_init: float | None = None,
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    channel_axis: int = -1,
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult: ...


def square(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    queries: int = 1000,
    norm: Norm = "linf",
    p_init: float | None = None,
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    channel_axis: int = -1,
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult:
    r"""Square Attack (Andriushchenko et al., 2020), L-inf, L2 and L1: score-based random search.

    Minimises, per example, the margin :math:`z_y - \max_{j\ne y} z_j`
    (untargeted) or the cross-entropy of the target (targeted) by random
    search. Each iteration draws, per example (as the paper's code does;
    AutoAttack's shares one window across the batch), a square window of side
    :math:`s = \mathrm{round}(\sqrt{p\,H W})` whose corner is uniform in
    :math:`[0, \max(H-s, 1)) \times [0, \max(W-s, 1))` (the reference codes' range), and proposes:

    * L-inf: the window's pixels set to :math:`x \pm \epsilon` (one random sign per
      channel), i.e. :math:`x' = \Pi(x_{best} + 2\epsilon\,\sigma\,\mathbb{1}_W)`;
    * L2: the perturbation of a second random window moved into the first one,
      plus a nested-rectangles pattern of opposite signs in the window's two
      halves (weights :math:`\sum_{k \ge d} (k+1)^{-2}` at Chebyshev distance
      :math:`d` from each half's centre), rescaled so the whole perturbation has
      L2 norm :math:`\epsilon`;
    * L1 (AutoAttack's L1 Square, for "Mind the box", Croce & Hein, 2021): the
      same move with patterns of unit L1 norm (weights :math:`(k+1)^{-4}`). Per
      channel :math:`c`, the first window's new content is the pattern (with a
      random sign) plus the window's old perturbation divided by its L1 norm
      :math:`\|\delta_{W_1,c}\|_1`, rescaled to L1 mass
      :math:`C\,\big(\max(\epsilon - \|\delta\|_1, 0)/C + \|\delta_{W_1\cup W_2,c}\|_1\big)`
      (``C`` channels), the second window is cleared, and the point is the exact
      projection of :math:`x + \delta` onto the L1 ball of radius
      :math:`\epsilon(1 - 10^{-6})` intersected with the box
      (:func:`jaxadv.threat_models.project_l1_box`), as AutoAttack does.

    The proposal is kept when it lowers the loss or succeeds (success is the
    argmax test of :func:`jaxadv.is_adversarial`). The fraction
    :math:`p` starts at ``p_init`` (default 0.8 for L-inf and 0.1 for L2, the
    paper's values, and 0.8 for L1, AutoAttack's; AutoAttack runs every norm at
    0.8) and is halved after iterations 10, 50, 200, 500,
    1000, 2000, 4000, 6000 and 8000, the thresholds rescaled by
    ``queries / 10000``. The side is at least 1 (L-inf) or an odd number >= 3
    (L2, L1), at most ``min(H, W)``. The start point is vertical stripes
    :math:`x + \epsilon\,\sigma_{w,c}` (L-inf), a grid of L2 patterns (L2), or a
    grid of L1 patterns projected onto the L1 ball and the box (L1).

    Queries: 1 for the clean input (already misclassified examples, and those
    with non-finite scores, stop there, returned unchanged), 1 for the start
    point, then 1 per iteration until the example succeeds; ``queries - 2``
    iterations run. See :mod:`jaxadv.attacks.blackbox` for the counting rules.

    Args:
      logits_fn: the model, evaluated only (no gradient): a JAX model or
        :func:`jaxadv.from_callable`. Scores may be logits or probabilities.
      x: ``[batch, H, W, C]`` (``channel_axis=-1``), ``[batch, C, H, W]``
        (``channel_axis=1``) or ``[batch, H, W]`` inputs inside ``bounds``.
      y: labels ``[batch]`` (targets when ``targeted``) or one-hot; ``None``:
        the model's predictions.
      key: PRNG key: one key, or a ``[batch]`` array of keys, one per example
        (:mod:`jaxadv.keys`); each example's windows and signs come from its own.
      eps: radius, scalar or ``[batch]`` (traced).
      queries: per-example budget of model evaluations (static, >= 2).
      norm: ``"linf"``, ``"l2"`` or ``"l1"`` (static).
      p_init: initial fraction of pixels in a square (static).
      targeted: minimise the target's cross-entropy and stop when it is predicted.
      bounds: ``(lo, hi)``.
      channel_axis: ``-1`` or ``1`` for 4-D inputs (static).
      loop: ``"auto"``, ``"fori"``, ``"compiled"`` or ``"host"`` (see :mod:`jaxadv.engine`).
      return_info: return an :class:`jaxadv.AttackResult` ``(x_adv, success, queries)``
        instead of the array: ``success`` re-predicted on ``x_adv``, ``queries``
        ``[batch]`` int32 evaluations spent per example.

    Returns:
      The adversarial batch, shape and dtype of ``x``, inside the eps-ball and
      ``bounds`` (an :class:`jaxadv.AttackResult` with ``return_info``).
    """
    norm = check_norm(norm)
    queries = check_queries(queries, 2)
    p_init = (0.1 if norm == "l2" else 0.8) if p_init is None else float(p_init)
    if not 0.0 < p_init <= 1.0:
        raise ValueError(f"p_init must be in (0, 1], got {p_init}")
    check_key(key)
    p = prepare(logits_fn, x, y, bounds=bounds, targeted=targeted, eps=eps)
    layout = image_layout(p.x, channel_axis)
    check_finite_eps(p, allow_inf=norm == "linf")  # the L2 and L1 proposals use the norm eps
    if p.empty:
        return empty_result(p, return_info=return_info)
    with reraise_callable_errors():
        state = _square_init(
            row_keys(key, p.x.shape[0]), p.params, p.x, p.labels, p.lo, p.hi, p.eps,
            model=p.model, norm=norm, targeted=targeted, layout=layout,
        )  # fmt: skip
        if queries > 2:
            operands = _SquareOperands(
                p.params, p.x, p.labels, p.lo, p.hi, p.eps, jnp.asarray(queries, jnp.float32)
            )
            static = _SquareStatic(p.model, norm, targeted, p_init, layout)
            state = iterate(_square_body, state, operands, steps=queries - 2, static=static, loop=loop)
        return finish(p, state.x_best, state.tally.queries, targeted=targeted, return_info=return_info)
