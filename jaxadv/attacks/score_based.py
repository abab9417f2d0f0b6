r"""Score-based black-box attacks: they query the model's scores, never its gradient.

* :func:`square`: the Square Attack (Andriushchenko et al., 2020), L-inf and L2,
  a random search over square-shaped updates with the paper's schedule of
  square sizes.
* :func:`spsa` and :func:`nes`: projected gradient ascent with a gradient
  *estimated* from finite differences along random directions (SPSA, Uesato et
  al., 2018; NES, Ilyas et al., 2018).

All three return a :class:`BlackBoxResult` ``(x_adv, success, queries)`` and
share these rules:

* ``queries`` (static) is a per-example budget of model evaluations. The
  evaluation of the clean input counts as the first query. ``result.queries``
  holds, per example, the number of evaluations whose answers the attack used;
  it never exceeds the budget.
* An example stops (is frozen, and stops spending queries) as soon as it is
  misclassified (untargeted) or classified as its target (targeted).
* ``result.success`` is recomputed by one final evaluation of the returned
  examples (a check, not counted in ``queries``).
* A point where the model's scores are not finite (NaN or inf) is never a
  success nor an improvement. Examples whose clean scores are not finite are
  returned unchanged after the first query; an empty batch is returned as it is.
* The loops run through :func:`jaxadv.iterate` with fixed shapes: rows of
  frozen examples still travel through the model in each batched call, but
  their answers are discarded and not counted. A model built by
  :func:`jaxadv.from_callable` therefore sees the whole batch at each call.
* The model is only ever evaluated, never differentiated: a model whose
  gradient raises (every :func:`jaxadv.from_callable` model) works.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv.attacks.base import Problem, check_step_size, prepare
from jaxadv.callables import reraise_callable_errors
from jaxadv.engine import iterate
from jaxadv.losses import as_onehot, cross_entropy, cw_margin, finite_rows
from jaxadv.models import combine_model
from jaxadv.threat_models import (
    norm_of,
    per_example,
    project_to_feasible,
    row_sum,
    steepest_direction,
    step_along,
)
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, LoopMode, LossFn, Norm, PRNGKey
from jaxadv.validation import check_norm, check_steps, is_traced

__all__ = ["BlackBoxResult", "nes", "spsa", "square"]

_TINY = 1e-12
# Iterations (out of 10,000) after which the Square Attack halves p (Andriushchenko et al., 2020).
_P_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


class BlackBoxResult(NamedTuple):
    """Result of a black-box attack.

    Attributes:
      x_adv: ``[batch, ...]`` adversarial examples, shape and dtype of ``x``.
      success: ``[batch]`` bool, from re-evaluating the model on ``x_adv``:
        misclassified (untargeted) or classified as the target (targeted).
      queries: ``[batch]`` int32, model evaluations spent per example (never
        above the budget).
    """

    x_adv: Array
    success: Array
    queries: Array


# --- shared pieces ------------------------------------------------------------


def success_margin(z: Array, onehot: Array, targeted: bool) -> Array:
    r"""Per-example margin that is negative exactly when the attack succeeded.

    Untargeted: :math:`z_y - \max_{j\ne y} z_j`; targeted:
    :math:`\max_{j\ne t} z_j - z_t`. NaN where the scores are not all finite, so
    that the example is neither a success (``< 0``) nor active (``>= 0``).
    """
    m = cw_margin(z, onehot)
    return jnp.where(finite_rows(z), m if targeted else -m, jnp.nan)


def check_queries(queries: Any, minimum: int) -> int:
    queries = check_steps(queries, "queries")
    if queries < minimum:
        raise ValueError(f"queries must be >= {minimum} for this attack, got {queries}")
    return queries


def empty_result(p: Problem) -> BlackBoxResult:
    """The result for a batch of 0 examples."""
    return BlackBoxResult(p.finalize(p.x), jnp.zeros((0,), bool), jnp.zeros((0,), jnp.int32))


def finish(p: Problem, x_adv: Array, queries: Array, targeted: bool) -> BlackBoxResult:
    """Cast back to the caller's dtype and re-evaluate success on the returned examples."""
    out = p.finalize(x_adv)
    z = combine_model(p.model, p.params)(out.astype(jnp.float32)).astype(jnp.float32)
    success = success_margin(z, as_onehot(p.labels, p.num_classes), targeted) < 0
    result = BlackBoxResult(out, success, queries.astype(jnp.int32))
    if not is_traced(result):
        result = jax.block_until_ready(result)
    return result


def _layout(x: Array, channel_axis: int) -> str:
    if x.ndim == 4:
        if channel_axis in (-1, 3):
            return "nhwc"
        if channel_axis == 1:
            return "nchw"
        raise ValueError(f"channel_axis must be -1 (NHWC) or 1 (NCHW), got {channel_axis}")
    if x.ndim == 3:
        return "nhw"
    raise ValueError(
        "square needs image-shaped inputs [batch, H, W, C], [batch, C, H, W] or [batch, H, W]; "
        f"got shape {x.shape} (reshape flat features to an image, e.g. inside from_callable's fn)"
    )


def _to_nhwc(a: Array, layout: str) -> Array:
    if layout == "nchw":
        return jnp.transpose(a, (0, 2, 3, 1))
    if layout == "nhw":
        return a[..., None]
    return a


def _from_nhwc(a: Array, layout: str) -> Array:
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
    """Side ``s`` of the square at iteration ``i`` (traced int32)."""
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


def _inverse_squares(n: int) -> Array:
    """``T[k] = sum_{j=1}^{k} 1/j^2`` for ``k = 0..n``."""
    return jnp.asarray(np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1) ** 2)]), jnp.float32)


def _rectangle(r: Array, c: Array, a: Array, bw: Array, table: Array) -> Array:
    r"""The L2 Square Attack's nested-rectangles pattern on an ``a x bw`` rectangle at
    local coordinates ``(r, c)``: :math:`\sum_{k=d}^{K-1} (k+1)^{-2}` with ``d`` the
    Chebyshev distance to the centre ``(a//2, bw//2)`` and ``K = max(a//2, bw//2) + 1``;
    zero outside the rectangle."""
    d = jnp.maximum(jnp.abs(r - a // 2), jnp.abs(c - bw // 2))
    k = jnp.maximum(a // 2, bw // 2) + 1
    inside = (r >= 0) & (r < a) & (c >= 0) & (c < bw)
    n = table.shape[0] - 1
    value = table[jnp.clip(k, 0, n)] - table[jnp.clip(d, 0, n)]
    return jnp.where(inside & (d < k), value, 0.0)


def _eta(r: Array, c: Array, s: Array, flip: Array, table: Array) -> Array:
    """The L2 Square Attack's ``s x s`` update pattern (unit L2 norm per example):
    nested rectangles of opposite signs in the two halves, randomly transposed.

    ``r, c``: ``[b, H, W]`` local coordinates; ``flip``: ``[b, 1, 1]`` bool."""
    r, c = jnp.where(flip, c, r), jnp.where(flip, r, c)
    half = s // 2
    top = _rectangle(r, c, half, s, table)
    bottom = _rectangle(r - half, c, s - half, s, table)

    def unit(a: Array) -> Array:
        n = jnp.sqrt(row_sum((a * a).reshape(a.shape[0], -1)))
        return a / jnp.maximum(n[:, None, None], _TINY)

    return unit(unit(top) - unit(bottom))


def _spatial_norm(a: Array) -> Array:
    """L2 norm over the two spatial axes of ``[b, H, W, C]``, per channel: ``[b, 1, 1, C]``.

    Summed with :func:`jaxadv.row_sum`, so a row's value does not depend on the
    batch size (or on how a sharded batch is split)."""
    b, h, w, ch = a.shape
    return jnp.sqrt(row_sum((a * a).reshape(b, h * w, ch))).reshape(b, 1, 1, ch)


def _unit_l2(d: Array) -> Array:
    return d / (per_example(norm_of(d, "l2"), d) + _TINY)


def _square_objectives(z: Array, labels: Array, targeted: bool) -> tuple[Array, Array]:
    """``(margin, loss)``: margin < 0 means success; the attack minimises ``loss``
    (the margin when untargeted, the cross-entropy of the target when targeted)."""
    onehot = as_onehot(labels, z.shape[-1])
    margin = success_margin(z, onehot, targeted)
    return margin, (cross_entropy(z, onehot) if targeted else margin)


class _SquareState(NamedTuple):
    key: Array
    x_best: Array
    margin: Array
    loss: Array
    queries: Array


def _square_body(i: Array, state: _SquareState, operands: Any, static: Any) -> _SquareState:
    params, x, labels, lo, hi, eps, budget = operands
    model, norm, targeted, p_init, layout = static
    key, k_draw = jax.random.split(state.key)
    xs = _to_nhwc(x, layout)
    b, h, w, ch = xs.shape
    # One draw per iteration: two window corners, a transpose coin and the signs.
    u = jax.random.uniform(k_draw, (b, 5 + ch))
    s = _side(i, budget, p_init, h, w, norm)
    inside, r, c = _window(u[:, 0:2], h, w, s)
    m1 = inside[..., None].astype(jnp.float32)
    signs = jnp.where(u[:, 5:, None, None] < 0.5, -1.0, 1.0).transpose(0, 2, 3, 1)
    eps_b = per_example(eps, xs)
    if norm == "linf":
        best = _to_nhwc(state.x_best, layout)
        cand = jnp.where(m1 > 0, best + 2.0 * eps_b * signs, best)  # no inf * 0 for eps = inf
        cand = jnp.clip(cand, xs - eps_b, xs + eps_b)
    else:
        delta = _to_nhwc(state.x_best, layout) - xs
        inside2, _, _ = _window(u[:, 2:4], h, w, s)
        m2 = inside2[..., None].astype(jnp.float32)
        union = jnp.maximum(m1, m2)
        n_win1 = _spatial_norm(delta * m1)
        n_union = _spatial_norm(delta * union)
        n_image = per_example(norm_of(delta, "l2"), delta)
        flip = (u[:, 4] < 0.5)[:, None, None]
        pattern = _eta(r, c, s, flip, _inverse_squares(max(h, w) + 1))[..., None]
        new = pattern * signs + delta * m1 / (n_win1 + _TINY)
        new_norm = _spatial_norm(new)
        room = jnp.maximum(eps_b**2 - n_image**2, 0.0) / ch + n_union**2
        new = new / (new_norm + _TINY) * jnp.sqrt(room)
        delta = delta * (1.0 - m2) * (1.0 - m1) + new * m1
        cand = xs + _unit_l2(delta) * eps_b
    cand = _from_nhwc(cand, layout)
    cand = jnp.clip(cand, lo, hi)
    z = combine_model(model, params)(cand).astype(jnp.float32)
    margin, loss = _square_objectives(z, labels, targeted)
    active = state.margin >= 0
    better = active & ((loss < state.loss) | (margin < 0))
    keep = per_example(better, x) > 0
    return _SquareState(
        key=key,
        x_best=jnp.where(keep, cand, state.x_best),
        margin=jnp.where(better, margin, state.margin),
        loss=jnp.where(active & (loss < state.loss), loss, state.loss),
        queries=state.queries + active.astype(jnp.int32),
    )


@functools.partial(jax.jit, static_argnames=("model", "norm", "targeted", "layout"))
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
    stripes of ``+-eps`` (L-inf) or a grid of L2 patterns rescaled to norm ``eps``."""
    logits_fn = combine_model(model, params)
    key, k0, k1 = jax.random.split(key, 3)
    margin0, loss0 = _square_objectives(logits_fn(x).astype(jnp.float32), labels, targeted)
    xs = _to_nhwc(x, layout)
    b, h, w, ch = xs.shape
    eps_b = per_example(eps, xs)
    if norm == "linf":
        init = xs + eps_b * jax.random.rademacher(k0, (b, 1, w, ch), dtype=jnp.float32)
    else:
        # Tiles of side h // 5 starting at (h - 5 s) // 2, each an L2 pattern with its own sign.
        s0 = max(h // 5, 1)
        start = (h - s0 * 5) // 2
        table = _inverse_squares(max(h, w) + 1)
        rows = np.arange(h) - start
        cols = np.arange(w) - start
        tr, tc = rows // s0, cols // s0
        valid = (
            (rows >= 0)[:, None] & (cols >= 0)[None, :] & (tr < h // s0)[:, None] & (tc < w // s0)[None, :]
        )
        tile = np.where(valid, tr[:, None] * (w // s0 + 1) + tc[None, :], 0)
        n_tiles = (h // s0 + 1) * (w // s0 + 1)
        lr = jnp.asarray(np.broadcast_to((rows % s0)[:, None], (h, w)))[None]
        lc = jnp.asarray(np.broadcast_to((cols % s0)[None, :], (h, w)))[None]
        pattern = _eta(lr, lc, jnp.asarray(s0), jnp.zeros((1, 1, 1), bool), table)
        pattern = jnp.where(jnp.asarray(valid)[None], pattern, 0.0)[0]
        tile_signs = jax.random.rademacher(k0, (b, n_tiles, ch), dtype=jnp.float32)
        delta = pattern[None, :, :, None] * tile_signs[:, jnp.asarray(tile.reshape(-1))].reshape(b, h, w, ch)
        init = xs + _unit_l2(delta) * eps_b
    init = jnp.clip(_from_nhwc(init, layout), lo, hi)
    margin1, loss1 = _square_objectives(logits_fn(init).astype(jnp.float32), labels, targeted)
    # Clean success, or clean scores not finite (margin NaN): stop after query 1 at x.
    clean_stop = ~(margin0 >= 0)
    # A start point whose scores are not finite is not taken: the search starts at x.
    take_init = ~clean_stop & (margin1 == margin1)
    keep = per_example(take_init, x) > 0
    return _SquareState(
        key=k1,
        x_best=jnp.where(keep, init, x),
        margin=jnp.where(take_init, margin1, margin0),
        loss=jnp.where(take_init, loss1, loss0),
        queries=jnp.where(clean_stop, 1, 2).astype(jnp.int32),
    )


def square(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey,
    eps: ArrayLike,
    queries: int = 1000,
    norm: Norm = "linf",
    p_init: float | None = None,
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    channel_axis: int = -1,
    loop: LoopMode = "auto",
) -> BlackBoxResult:
    r"""Square Attack (Andriushchenko et al., 2020), L-inf and L2: score-based random search.

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
      halves, rescaled so the whole perturbation has L2 norm :math:`\epsilon`.

    The proposal is kept when it lowers the loss (or succeeds). The fraction
    :math:`p` starts at ``p_init`` (default 0.8 for L-inf and 0.1 for L2, the
    paper's values; AutoAttack runs both norms at 0.8) and is halved after iterations 10, 50, 200, 500,
    1000, 2000, 4000, 6000 and 8000, the thresholds rescaled by
    ``queries / 10000``. The side is at least 1 (L-inf) or an odd number >= 3
    (L2), at most ``min(H, W)``. The start point is vertical stripes
    :math:`x + \epsilon\,\sigma_{w,c}` (L-inf) or a grid of L2 patterns (L2).

    Queries: 1 for the clean input (already misclassified examples, and those
    with non-finite scores, stop there, returned unchanged), 1 for the start
    point, then 1 per iteration until the example succeeds; ``queries - 2``
    iterations run. See the module docstring for the counting rules and :class:`BlackBoxResult`.

    Args:
      logits_fn: the model, evaluated only (no gradient): a JAX model or
        :func:`jaxadv.from_callable`. Scores may be logits or probabilities.
      x: ``[batch, H, W, C]`` (``channel_axis=-1``), ``[batch, C, H, W]``
        (``channel_axis=1``) or ``[batch, H, W]`` inputs inside ``bounds``.
      y: labels ``[batch]`` (targets when ``targeted``) or one-hot; ``None``:
        the model's predictions.
      key: PRNG key.
      eps: radius, scalar or ``[batch]`` (traced).
      queries: per-example budget of model evaluations (static, >= 2).
      norm: ``"linf"`` or ``"l2"`` (static).
      p_init: initial fraction of pixels in a square (static).
      targeted: minimise the target's cross-entropy and stop when it is predicted.
      bounds: ``(lo, hi)``.
      channel_axis: ``-1`` or ``1`` for 4-D inputs (static).
      loop: ``"auto"``, ``"fori"``, ``"compiled"`` or ``"host"`` (see :mod:`jaxadv.engine`).

    Returns:
      :class:`BlackBoxResult`; ``x_adv`` inside the eps-ball and ``bounds``.
    """
    norm = check_norm(norm)
    if norm not in ("linf", "l2"):
        raise ValueError(f"square supports norm='linf' or 'l2', got {norm!r}")
    queries = check_queries(queries, 2)
    p_init = (0.8 if norm == "linf" else 0.1) if p_init is None else float(p_init)
    if not 0.0 < p_init <= 1.0:
        raise ValueError(f"p_init must be in (0, 1], got {p_init}")
    if key is None:
        raise ValueError("key is required (pass key=jax.random.key(0))")
    p = prepare(logits_fn, x, y, bounds=bounds, targeted=targeted, eps=eps)
    layout = _layout(p.x, channel_axis)
    check_finite_eps(p, allow_inf=norm == "linf")  # the L2 proposals rescale to norm eps
    if p.empty:
        return empty_result(p)
    with reraise_callable_errors():
        state = _square_init(
            key, p.params, p.x, p.labels, p.lo, p.hi, p.eps,
            model=p.model, norm=norm, targeted=targeted, layout=layout,
        )  # fmt: skip
        if queries > 2:
            operands = (p.params, p.x, p.labels, p.lo, p.hi, p.eps, jnp.asarray(queries, jnp.float32))
            static = (p.model, norm, targeted, p_init, layout)
            state = iterate(_square_body, state, operands, steps=queries - 2, static=static, loop=loop)
        return finish(p, state.x_best, state.queries, targeted)


# --- gradient-free PGD (SPSA, NES) ---------------------------------------------


class _EstimateState(NamedTuple):
    key: Array
    x_t: Array
    done: Array
    queries: Array


def _estimate_body(i: Array, state: _EstimateState, operands: Any, static: Any) -> _EstimateState:
    del i
    params, x, labels, lo, hi, eps, alpha, scale = operands
    model, norm, targeted, loss, samples, distribution = static
    logits_fn = combine_model(model, params)
    key, k_dir = jax.random.split(state.key)
    b = x.shape[0]
    # Batch-major layout [batch, 2, samples, ...]: merging it into one batch of
    # probes keeps each example's probes on the device that holds the example.
    shape = (b, samples, *x.shape[1:])
    if distribution == "rademacher":
        u = jax.random.rademacher(k_dir, shape, dtype=jnp.float32)
    else:
        u = jax.random.normal(k_dir, shape, jnp.float32)
    scale_b = per_example(scale, x)
    scale_s = scale_b[:, None] if scale_b.ndim else scale_b

    def probe_axes(a: Array) -> Array:  # bounds of x's full shape gain the probe axes
        return a[:, None, None] if jnp.ndim(a) == x.ndim else a

    pts = jnp.stack([state.x_t[:, None] + scale_s * u, state.x_t[:, None] - scale_s * u], axis=1)
    pts = jnp.clip(pts, probe_axes(lo), probe_axes(hi)).reshape((b * 2 * samples, *x.shape[1:]))
    z = logits_fn(pts).astype(jnp.float32)
    onehot = as_onehot(labels, z.shape[-1])
    rep = jnp.repeat(onehot, 2 * samples, axis=0)
    sign = -1.0 if targeted else 1.0
    f = (sign * loss(z, rep)).reshape(b, 2, samples)
    diff = (f[:, 0] - f[:, 1]).reshape((b, samples) + (1,) * (x.ndim - 1))
    # The mean over the probes, in row_sum's batch-independent order.
    grad = row_sum(diff * u) / samples / (2.0 * scale_b)
    estimated = jnp.all(jnp.isfinite(grad.reshape(b, -1)), axis=1)
    grad = jnp.where(per_example(estimated, grad) > 0, grad, 0.0)
    step = step_along(alpha, steepest_direction(grad, norm))
    x_new = project_to_feasible(state.x_t + step, x, eps, norm, lo, hi)
    z_new = logits_fn(x_new).astype(jnp.float32)
    hit = success_margin(z_new, onehot, targeted) < 0
    active = ~state.done
    # No move where a probe's scores or the new point's are not finite.
    move = per_example(active & estimated & finite_rows(z_new), x) > 0
    return _EstimateState(
        key=key,
        x_t=jnp.where(move, x_new, state.x_t),
        done=state.done | (active & hit),
        queries=state.queries + active.astype(jnp.int32) * (2 * samples + 1),
    )


@functools.partial(jax.jit, static_argnames=("model", "targeted"))
def _clean_done(params: Any, x: Array, labels: Array, *, model: Any, targeted: bool) -> Array:
    """Examples that stop after the clean query: already a success, or scores not finite."""
    z = combine_model(model, params)(x).astype(jnp.float32)
    return ~(success_margin(z, as_onehot(labels, z.shape[-1]), targeted) >= 0)


def check_finite_eps(p: Problem, *, allow_inf: bool = True) -> None:
    """Refuse (concrete values) ``eps = inf`` with unbounded ``bounds``, or at all when
    ``allow_inf`` is false."""
    if is_traced(p.eps, p.lo, p.hi) or bool(jnp.all(jnp.isfinite(p.eps))):
        return
    if not allow_inf:
        raise ValueError("eps must be finite for this attack and norm, got eps=inf")
    if not bool(jnp.all(jnp.isfinite(p.lo)) & jnp.all(jnp.isfinite(p.hi))):
        raise ValueError("eps is infinite and bounds are unbounded: pass a finite eps or finite bounds")


def _estimated_pgd(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None,
    *,
    key: PRNGKey,
    eps: ArrayLike,
    queries: int,
    samples: int,
    scale: ArrayLike,
    step_size: ArrayLike | None,
    norm: Norm,
    targeted: bool,
    bounds: Bounds,
    loss: LossFn,
    distribution: str,
    loop: LoopMode,
) -> BlackBoxResult:
    norm = check_norm(norm)
    samples = check_steps(samples, "samples")
    queries = check_queries(queries, 2 * samples + 2)
    if key is None:
        raise ValueError("key is required (pass key=jax.random.key(0))")
    steps = (queries - 1) // (2 * samples + 1)
    p = prepare(logits_fn, x, y, bounds=bounds, targeted=targeted, eps=eps)
    alpha = check_step_size(p.eps / 4.0 if step_size is None else step_size, p.x)
    scale_arr = check_step_size(scale, p.x, "the finite-difference scale")
    check_finite_eps(p)
    if p.empty:
        return empty_result(p)
    with reraise_callable_errors():
        done = _clean_done(p.params, p.x, p.labels, model=p.model, targeted=targeted)
        state = _EstimateState(key, p.x, done, jnp.ones(p.x.shape[:1], jnp.int32))
        operands = (p.params, p.x, p.labels, p.lo, p.hi, p.eps, alpha, scale_arr)
        static = (p.model, norm, targeted, loss, samples, distribution)
        state = iterate(_estimate_body, state, operands, steps=steps, static=static, loop=loop)
        return finish(p, state.x_t, state.queries, targeted)


def spsa(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey,
    eps: ArrayLike,
    queries: int = 1000,
    samples: int = 16,
    delta: ArrayLike = 0.01,
    step_size: ArrayLike | None = None,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: LossFn = cw_margin,
    loop: LoopMode = "auto",
) -> BlackBoxResult:
    r"""Gradient-free PGD with the SPSA gradient estimate (Uesato et al., 2018).

    Each iteration draws ``samples`` Rademacher directions :math:`v_k \in \{\pm1\}^n`
    and estimates

    .. math::
        \hat g = \frac{1}{K}\sum_{k=1}^{K}
          \frac{L(x_t + \delta v_k) - L(x_t - \delta v_k)}{2\delta}\, v_k

    (the perturbed points clipped into ``bounds``), then takes the PGD step
    :math:`x_{t+1} = \Pi_{B_\epsilon(x)\cap[lo,hi]}(x_t + \alpha\, d_p(\hat g))`
    (:func:`jaxadv.steepest_direction`, :func:`jaxadv.project_to_feasible`).
    :math:`L` is ``loss`` (default the margin :func:`jaxadv.cw_margin`), ascended,
    or descended when ``targeted``. The model is only evaluated.

    Queries: 1 for the clean input, then ``2 * samples + 1`` per iteration (the
    estimate and the new iterate) until the example succeeds;
    ``(queries - 1) // (2 * samples + 1)`` iterations run.

    Args:
      logits_fn: the model (evaluated only).
      x: ``[batch, ...]`` inputs inside ``bounds``.
      y: labels (targets when ``targeted``); ``None``: the model's predictions.
      key: PRNG key.
      eps: radius, scalar or ``[batch]`` (traced).
      queries: per-example budget (static, at least ``2 * samples + 2``).
      samples: antithetic pairs per estimate (static).
      delta: finite-difference scale (traced).
      step_size: :math:`\alpha` (traced), default ``eps / 4``.
      norm: ``"linf"``, ``"l2"`` or ``"l1"``.
      targeted, bounds, loss, loop: as in :func:`jaxadv.pgd`.

    Returns:
      :class:`BlackBoxResult`.
    """
    return _estimated_pgd(
        logits_fn, x, y, key=key, eps=eps, queries=queries, samples=samples, scale=delta,
        step_size=step_size, norm=norm, targeted=targeted, bounds=bounds, loss=loss,
        distribution="rademacher", loop=loop,
    )  # fmt: skip


def nes(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey,
    eps: ArrayLike,
    queries: int = 1000,
    samples: int = 16,
    sigma: ArrayLike = 0.001,
    step_size: ArrayLike | None = None,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: LossFn = cw_margin,
    loop: LoopMode = "auto",
) -> BlackBoxResult:
    r"""Gradient-free PGD with the NES gradient estimate (Ilyas et al., 2018).

    Natural evolution strategies with antithetic Gaussian sampling:

    .. math::
        \hat g = \frac{1}{2K\sigma}\sum_{k=1}^{K}
          \big(L(x_t + \sigma u_k) - L(x_t - \sigma u_k)\big)\, u_k,
        \qquad u_k \sim \mathcal N(0, I),

    followed by the projected step of :func:`spsa`. Queries and arguments as in
    :func:`spsa`, with ``sigma`` (traced) the search variance's scale.

    Returns:
      :class:`BlackBoxResult`.
    """
    return _estimated_pgd(
        logits_fn, x, y, key=key, eps=eps, queries=queries, samples=samples, scale=sigma,
        step_size=step_size, norm=norm, targeted=targeted, bounds=bounds, loss=loss,
        distribution="gaussian", loop=loop,
    )  # fmt: skip
