r"""Decision-based black-box attacks: they only see the model's top label.

:func:`hop_skip_jump` (Chen, Jordan & Wainwright, 2020), for the L2 and L-inf
norms, with a per-example query budget. It returns the adversarial batch
(with ``return_info=True`` an :class:`jaxadv.AttackResult` ``(x_adv, success,
queries)``), under the counting rules of the score-based attacks (see
:mod:`jaxadv.attacks.blackbox`): the clean input is query 1, ``queries`` never
exceeds the budget, an example whose budget cannot pay for the next stage
stops there, and ``success`` is re-evaluated on the returned examples. The
only model output used is :func:`jaxadv.success.hits` of a point: is it
adversarial (the argmax test of :func:`jaxadv.is_adversarial`; never where the
scores are not finite)?
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal, NamedTuple, overload

import jax
import jax.numpy as jnp

from jaxadv._core.compile import jit
from jaxadv._core.problem import prepare
from jaxadv._core.rows import select_rows
from jaxadv._core.search import midpoint, narrow
from jaxadv.attacks.blackbox import check_key, check_queries, empty_result, finish
from jaxadv.callables import reraise_callable_errors
from jaxadv.engine import iterate
from jaxadv.keys import draw_rows, fold_rows, row_keys, split_rows
from jaxadv.models import combine_model
from jaxadv.success import AttackResult, hits, stop_mask
from jaxadv.threat_models import norm_of, per_example, row_sum
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, LoopMode, Norm, PRNGKey
from jaxadv.validation import check_norm, check_steps, is_traced

__all__ = ["hop_skip_jump"]

_TINY = 1e-12


class _HSJState(NamedTuple):
    key: Array
    x_adv: Array  # current adversarial point (x itself while none was found)
    dist: Array  # [batch] distance of x_adv to x in the attack's norm
    queries: Array  # [batch] int32
    found: Array  # [batch] bool: x_adv is adversarial
    stopped: Array  # [batch] bool: no more queries for this example


def _theta(norm: str, d: int, gamma: float) -> float:
    return gamma / (d * math.sqrt(d)) if norm == "l2" else gamma / d**2


def _per_row(a: Array, x: Array) -> Array:
    """``a`` (broadcasting against ``x``) as ``[batch, n]`` rows."""
    return jnp.broadcast_to(a, x.shape).reshape(x.shape[0], -1)


def _mean_side(lo: Array, hi: Array, x: Array) -> Array:
    """``[batch]`` mean of ``hi - lo`` over each example's coordinates (inf or NaN
    where its box is unbounded)."""
    side = _per_row(hi - lo, x)
    return row_sum(side) / side.shape[1]


def _finite_box(lo: Array, hi: Array, x: Array) -> Array:
    """``[batch]`` bool: every bound of the example is finite."""
    return jnp.all(jnp.isfinite(_per_row(lo, x)) & jnp.isfinite(_per_row(hi, x)), axis=1)


def _binary_search(
    logits_fn: Any,
    x: Array,
    x_adv: Array,
    labels: Array,
    queries: Array,
    active: Array,
    budget: Array,
    *,
    norm: Norm,
    targeted: bool,
    theta: float,
    steps: int,
) -> tuple[Array, Array]:
    r"""Move ``x_adv`` toward ``x`` onto the decision boundary (adversarial side).

    L2: search :math:`\alpha\in[0,1]` on the segment :math:`(1-\alpha)x+\alpha x'`
    to a tolerance :math:`\theta`; L-inf: search the radius :math:`\alpha` of
    :math:`\mathrm{clip}(x', x-\alpha, x+\alpha)` in :math:`[0, \|x'-x\|_\infty]` to a
    tolerance :math:`\min(\theta\|x'-x\|_\infty, \theta)`. One query per halving,
    per example, while the budget allows.
    """
    if norm == "l2":
        high = jnp.ones(x.shape[:1], jnp.float32)
        tol = jnp.full(x.shape[:1], theta, jnp.float32)
    else:
        high = norm_of(x_adv - x, "linf")
        tol = jnp.minimum(high * theta, theta)

    def project(alpha: Array) -> Array:
        a = per_example(alpha, x)
        if norm == "l2":
            return (1.0 - a) * x + a * x_adv
        return jnp.clip(x_adv, x - a, x + a)

    def step(_: Array, carry: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
        low, high, q = carry
        searching = active & (high - low > tol) & (q + 1 <= budget)
        mid = midpoint(low, high)
        low, high = narrow(low, high, mid, hits(logits_fn(project(mid)), labels, targeted), searching)
        return low, high, q + searching.astype(jnp.int32)

    low = jnp.zeros_like(high)
    low, high, queries = jax.lax.fori_loop(0, steps, step, (low, high, queries))
    out = project(high)
    return select_rows(active, out, x_adv), queries


class _HSJOperands(NamedTuple):
    params: Any
    x: Array
    labels: Array  # [batch] int32
    lo: Array
    hi: Array
    budget: Array  # int32 per-example query budget


class _HSJStatic(NamedTuple):
    model: Any
    norm: Norm
    targeted: bool
    gamma: float
    init_evals: int
    max_evals: int
    n_max: int  # directions drawn per estimate (the first n_t are used)
    geo_steps: int
    bs_steps: int


def _hsj_body(i: Array, state: _HSJState, ops: _HSJOperands, static: _HSJStatic) -> _HSJState:
    params, x, labels, lo, hi, budget = ops
    model, norm, targeted, gamma, init_evals, max_evals, n_max, geo_steps, bs_steps = static
    logits_fn = combine_model(model, params)
    b = x.shape[0]
    d = math.prod(x.shape[1:])
    theta = _theta(norm, d, gamma)
    t = (i + 1).astype(jnp.float32)
    key, k_dir = split_rows(state.key)

    # 1. Estimate the boundary's normal at x_adv from n_t label queries.
    n_t = jnp.minimum(jnp.floor(init_evals * jnp.sqrt(t)), max_evals).astype(jnp.int32)
    n_t = jnp.minimum(n_t, n_max)
    active = state.found & ~state.stopped & (state.queries + n_t <= budget)
    stopped = state.stopped | (state.found & ~active)
    if norm == "l2":
        delta = math.sqrt(d) * theta * state.dist
    else:
        delta = d * theta * state.dist
    # The first radius is a tenth of the mean side of the example's box; without a
    # finite box, a tenth of the distance to x.
    span = _mean_side(lo, hi, x)
    delta = jnp.where(i == 0, jnp.where(jnp.isfinite(span), 0.1 * span, 0.1 * state.dist), delta)
    delta = jnp.maximum(delta, _TINY)
    # Probes are laid out batch-major, [batch, n_max, ...]: merged into one
    # [batch * n_max] query batch, each device keeps its own examples' probes.
    shape = (n_max, *x.shape[1:])
    if norm == "l2":
        u = draw_rows(lambda k: jax.random.normal(k, shape, jnp.float32), k_dir)
    else:
        u = draw_rows(lambda k: jax.random.uniform(k, shape, jnp.float32, -1.0, 1.0), k_dir)
    u_norm = norm_of(u.reshape(b * n_max, -1), "l2").reshape((b, n_max) + (1,) * (x.ndim - 1))
    u = u / jnp.maximum(u_norm, _TINY)
    delta_b = delta.reshape((b, 1) + (1,) * (x.ndim - 1))
    lo_p, hi_p = (jnp.expand_dims(v, 1) if v.ndim == x.ndim else v for v in (lo, hi))
    pert = jnp.clip(state.x_adv[:, None] + delta_b * u, lo_p, hi_p)
    rv = (pert - state.x_adv[:, None]) / delta_b
    labels_rep = jnp.repeat(labels, n_max, axis=0)
    adv = hits(logits_fn(pert.reshape((b * n_max, *x.shape[1:]))), labels_rep, targeted)
    phi = 2.0 * adv.reshape(b, n_max).astype(jnp.float32) - 1.0
    valid = (jnp.arange(n_max) < n_t)[None, :].astype(jnp.float32)
    count = n_t.astype(jnp.float32)
    mean_phi = jnp.sum(phi * valid, axis=1) / count
    same = jnp.abs(mean_phi) == 1.0
    weight = jnp.where(same[:, None], mean_phi[:, None], phi - mean_phi[:, None]) * valid
    grad = row_sum(weight.reshape(b, n_max, *([1] * (x.ndim - 1))) * rv) / count
    grad = grad / (per_example(norm_of(grad, "l2"), grad) + _TINY)
    direction = grad if norm == "l2" else jnp.sign(grad)
    queries = state.queries + active.astype(jnp.int32) * n_t

    # 2. Geometric search of the step size: halve until the step stays adversarial.
    def geo(_: Array, carry: tuple[Array, Array, Array, Array]) -> tuple[Array, Array, Array, Array]:
        step, moved, x_new, q = carry
        trying = active & ~moved & (q + 1 <= budget)
        cand = jnp.clip(state.x_adv + per_example(step, x) * direction, lo, hi)
        ok = hits(logits_fn(cand), labels, targeted)
        take = trying & ok
        x_new = select_rows(take, cand, x_new)
        step = jnp.where(trying & ~ok, 0.5 * step, step)
        return step, moved | take, x_new, q + trying.astype(jnp.int32)

    # x / sqrt(t) would be rewritten to x * rsqrt(t), whose vectorised form rounds
    # differently from its scalar one: the same row could start from another step
    # on a device holding fewer rows. One exact scalar factor, then a product.
    step0 = state.dist * jax.lax.optimization_barrier(1.0 / jnp.sqrt(t))
    carry = (step0, jnp.zeros_like(active), state.x_adv, queries)
    _, _, x_new, queries = jax.lax.fori_loop(0, geo_steps, geo, carry)

    # 3. Back to the boundary.
    x_new, queries = _binary_search(
        logits_fn, x, x_new, labels, queries, active, budget,
        norm=norm, targeted=targeted, theta=theta, steps=bs_steps,
    )  # fmt: skip
    dist = jnp.where(active, norm_of(x_new - x, norm), state.dist)
    return _HSJState(key, x_new, dist, queries, state.found, stopped)


@functools.partial(
    jit, static_argnames=("model", "norm", "targeted", "init_tries", "theta", "bs_steps", "has_init")
)
def _hsj_init(
    key: PRNGKey,
    params: Any,
    x: Array,
    labels: Array,
    lo: Array,
    hi: Array,
    budget: Array,
    x_init: Array,
    *,
    model: Any,
    norm: Norm,
    targeted: bool,
    init_tries: int,
    theta: float,
    bs_steps: int,
    has_init: bool,
) -> _HSJState:
    """Query 1: the clean input. Then a first adversarial point: the user's
    ``x_init`` (one query) or uniform noise in the box (up to ``init_tries``
    queries), brought to the boundary by a binary search."""
    logits_fn = combine_model(model, params)
    key, k_noise = split_rows(key)
    z_clean = logits_fn(x)
    clean_adv = hits(z_clean, labels, targeted)
    # Examples with non-finite clean scores stop here and are returned unchanged.
    clean_stop = stop_mask(z_clean, labels, targeted)
    queries = jnp.ones(x.shape[:1], jnp.int32)
    if has_init:
        can = ~clean_stop & (queries + 1 <= budget)
        found = can & hits(logits_fn(x_init), labels, targeted)
        x_adv = select_rows(found, x_init, x)
        queries = queries + can.astype(jnp.int32)
    else:
        # Uniform noise needs a finite box: without one no start point is drawn.
        # Per example: bounds may differ between the rows.
        boxed = _finite_box(lo, hi, x)
        box = per_example(boxed, x) > 0
        lo_s, span = jnp.where(box, lo, 0.0), jnp.where(box, hi - lo, 0.0)

        def attempt(j: Array, carry: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
            found, x_adv, q = carry
            searching = ~clean_stop & ~found & (q + 1 <= budget) & boxed
            row = x.shape[1:]
            noise = draw_rows(lambda k: jax.random.uniform(k, row, jnp.float32), fold_rows(k_noise, j))
            noise = lo_s + noise * span
            ok = searching & hits(logits_fn(noise), labels, targeted)
            x_adv = select_rows(ok, noise, x_adv)
            return found | ok, x_adv, q + searching.astype(jnp.int32)

        start = (jnp.zeros_like(clean_adv), x, queries)
        found, x_adv, queries = jax.lax.fori_loop(0, init_tries, attempt, start)
    x_adv, queries = _binary_search(
        logits_fn, x, x_adv, labels, queries, found, budget,
        norm=norm, targeted=targeted, theta=theta, steps=bs_steps,
    )  # fmt: skip
    dist = jnp.where(found, norm_of(x_adv - x, norm), 0.0)
    return _HSJState(key, x_adv, dist, queries, found | clean_adv, clean_stop)


def _default_steps(queries: int, init_evals: int, max_evals: int, bs_steps: int) -> int:
    """Iterations a budget pays for, counting each iteration's gradient queries
    plus a few for its step search and half a binary search."""
    spent, t = 2 + bs_steps, 0
    while t < 10_000:
        cost = min(int(init_evals * math.sqrt(t + 1)), max_evals) + 2 + bs_steps // 2
        if spent + cost > queries:
            break
        spent += cost
        t += 1
    return max(t, 1)


@overload
def hop_skip_jump(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    queries: int = 1000,
    norm: Norm = "l2",
    targeted: bool = False,
    x_init: ArrayLike | None = None,
    steps: int | None = None,
    init_evals: int = 100,
    max_evals: int = 10_000,
    gamma: float = 1.0,
    init_tries: int = 100,
    geometric_steps: int = 25,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
    return_info: Literal[False] = False,
) -> Array: ...


@overload
def hop_skip_jump(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    queries: int = 1000,
    norm: Norm = "l2",
    targeted: bool = False,
    x_init: ArrayLike | None = None,
    steps: int | None = None,
    init_evals: int = 100,
    max_evals: int = 10_000,
    gamma: float = 1.0,
    init_tries: int = 100,
    geometric_steps: int = 25,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
    return_info: Literal[True],
) -> AttackResult: ...


@overload
def hop_skip_jump(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    queries: int = 1000,
    norm: Norm = "l2",
    targeted: bool = False,
    x_init: ArrayLike | None = None,
    steps: int | None = None,
    init_evals: int = 100,
    max_evals: int = 10_000,
    gamma: float = 1.0,
    init_tries: int = 100,
    geometric_steps: int = 25,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult: ...


def hop_skip_jump(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    queries: int = 1000,
    norm: Norm = "l2",
    targeted: bool = False,
    x_init: ArrayLike | None = None,
    steps: int | None = None,
    init_evals: int = 100,
    max_evals: int = 10_000,
    gamma: float = 1.0,
    init_tries: int = 100,
    geometric_steps: int = 25,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult:
    r"""HopSkipJump (Chen, Jordan & Wainwright, 2020): a decision-based attack.

    Uses only the top-1 label. Minimises :math:`\|x' - x\|_p` (``norm="l2"`` or
    ``"linf"``) over adversarial :math:`x'`. After a first adversarial point
    (uniform noise in ``bounds``, or ``x_init``), each iteration :math:`t`:

    1. *Binary search* to the boundary along the segment to :math:`x` (L2) or
       by shrinking the L-inf box around :math:`x` (L-inf), to a tolerance
       :math:`\theta = \gamma / d^{3/2}` (L2) or :math:`\gamma / d^2` (L-inf)
       with :math:`d` the input dimension.
    2. *Gradient-direction estimate* from :math:`n_t = \min(n_0\sqrt t, n_{max})`
       random unit directions :math:`u_k` (Gaussian for L2, uniform for L-inf) at
       radius :math:`\delta_t` (:math:`0.1(hi-lo)` at :math:`t=1`, then
       :math:`\sqrt d\,\theta\,d_{t-1}` for L2, :math:`d\,\theta\,d_{t-1}` for L-inf):
       :math:`\hat g = \frac{1}{n_t}\sum_k (\phi_k - \bar\phi)\,u_k` with
       :math:`\phi_k=\pm1` the decision at :math:`x'+\delta_t u_k` (the baseline
       :math:`\bar\phi` is dropped when all decisions agree).
    3. *Geometric step search*: :math:`\xi = d_{t-1}/\sqrt t`, halved until
       :math:`x' + \xi v` is adversarial, with :math:`v = \hat g/\|\hat g\|_2` (L2)
       or :math:`\mathrm{sign}(\hat g)` (L-inf); then step 1 again.

    Queries: 1 for the clean input (already adversarial examples, and those
    whose scores are not finite, stop there and are returned unchanged), then
    one per label query until the budget can no longer pay for the next stage
    (a gradient estimate costs :math:`n_t`). The current point is always
    adversarial; an example for which no adversarial start was found is
    returned as ``x`` with ``success=False``; so is every example when
    ``bounds`` are not finite and no ``x_init`` is given (no uniform noise can
    be drawn; no query is spent on it). A point whose scores are not finite is
    never adversarial. Loops of fixed length run the searches: ``n_max``
    directions are drawn for every estimate
    but only the first :math:`n_t` are used and counted.

    Args:
      logits_fn: the model; only ``argmax logits_fn(x)`` is used (a labels-only
        :func:`jaxadv.from_callable` model works).
      x: ``[batch, ...]`` inputs inside ``bounds``.
      y: labels ``[batch]`` (targets when ``targeted``) or one-hot; ``None``:
        the model's predictions.
      key: PRNG key: one key, or a ``[batch]`` array of keys, one per example
        (:mod:`jaxadv.keys`); each example's noise and directions come from its own.
      queries: per-example budget of label queries (static, >= 2).
      norm: ``"l2"`` or ``"linf"`` (static).
      targeted: look for points classified as ``y``; needs ``x_init``.
      x_init: ``[batch, ...]`` adversarial starting points (e.g. images of the
        target classes); default: uniform noise.
      steps: iterations (static); default: as many as the budget pays for.
      init_evals, max_evals: :math:`n_0` and :math:`n_{max}` (static).
      gamma: :math:`\gamma` of the search tolerance (static).
      init_tries: noise draws for the start point (static).
      geometric_steps: maximum halvings of the step size (static).
      bounds: ``(lo, hi)``.
      loop: ``"auto"``, ``"fori"``, ``"compiled"`` or ``"host"`` (see :mod:`jaxadv.engine`).
      return_info: return an :class:`jaxadv.AttackResult` ``(x_adv, success, queries)``
        instead of the array: ``success`` re-predicted on ``x_adv``, ``queries``
        ``[batch]`` int32 label queries spent per example.

    Returns:
      The adversarial batch, shape and dtype of ``x``, inside ``bounds`` (an
      :class:`jaxadv.AttackResult` with ``return_info``).
    """
    norm = check_norm(norm)
    if norm not in ("l2", "linf"):
        raise ValueError(f"hop_skip_jump supports norm='l2' or 'linf', got {norm!r}")
    queries = check_queries(queries, 2)
    init_evals = check_steps(init_evals, "init_evals")
    max_evals = check_steps(max_evals, "max_evals")
    init_tries = check_steps(init_tries, "init_tries")
    geometric_steps = check_steps(geometric_steps, "geometric_steps")
    if is_traced(gamma) or not 0 < float(gamma) < float("inf"):
        raise ValueError(f"gamma must be a finite Python float > 0 (it is static), got {gamma!r}")
    check_key(key)
    if targeted and x_init is None:
        raise ValueError("a targeted hop_skip_jump needs x_init: starting points classified as the targets")
    p = prepare(logits_fn, x, y, bounds=bounds, targeted=targeted)
    if p.empty:
        return empty_result(p, return_info=return_info)
    labels = p.labels if p.labels.ndim == 1 else jnp.argmax(p.labels, axis=-1).astype(jnp.int32)
    if x_init is not None:
        x_init_arr = jnp.asarray(x_init, jnp.float32)
        if x_init_arr.shape != p.x.shape:
            raise ValueError(f"x_init must have the shape of x {p.x.shape}, got {x_init_arr.shape}")
        x_init_arr = jnp.clip(x_init_arr, p.lo, p.hi)
    else:
        x_init_arr = p.x
    d = math.prod(p.x.shape[1:])
    theta = _theta(norm, d, gamma)
    bs_steps = math.ceil(math.log2(1.0 / theta)) + (1 if norm == "l2" else 8)
    steps = _default_steps(queries, init_evals, max_evals, bs_steps) if steps is None else check_steps(steps)
    n_max = max(1, min(max_evals, int(init_evals * math.sqrt(steps))))
    budget = jnp.asarray(queries, jnp.int32)
    with reraise_callable_errors():
        state = _hsj_init(
            row_keys(key, p.x.shape[0]), p.params, p.x, labels, p.lo, p.hi, budget, x_init_arr,
            model=p.model, norm=norm, targeted=targeted, init_tries=init_tries, theta=theta,
            bs_steps=bs_steps, has_init=x_init is not None,
        )  # fmt: skip
        operands = _HSJOperands(p.params, p.x, labels, p.lo, p.hi, budget)
        static = _HSJStatic(
            p.model, norm, targeted, float(gamma), init_evals, max_evals, n_max, geometric_steps, bs_steps
        )
        state = iterate(_hsj_body, state, operands, steps=steps, static=static, loop=loop)
        x_adv = select_rows(state.found, state.x_adv, p.x)
        return finish(p, x_adv, state.queries, targeted=targeted, return_info=return_info)
