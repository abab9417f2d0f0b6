r"""EAD, the elastic-net attack (Chen et al., AAAI 2018).

EAD looks for a small perturbation in the elastic-net sense by minimising, per
example and for a trade-off constant :math:`c`,

.. math::
    c \cdot g(x') + \|x' - x\|_2^2 + \beta\,\|x' - x\|_1 \quad\text{over } x' \in [lo, hi],

where :math:`g(x') = \max(z_y(x') - \max_{j \ne y} z_j(x'),\, -\kappa)` (untargeted;
targeted: :math:`\max(\max_{j \ne t} z_j - z_t, -\kappa)`) is the margin loss of
Carlini & Wagner on the logits :math:`z`. The smooth part
:math:`h(x') = c\,g(x') + \|x' - x\|_2^2` is handled by gradient steps, the
:math:`L_1` term by the projected shrinkage-thresholding operator
:math:`S_\beta` onto the box,

.. math::
    [S_\beta(u)]_i = \begin{cases}
        \min(u_i - \beta,\, hi_i) & u_i - x_i > \beta, \\
        x_i & |u_i - x_i| \le \beta, \\
        \max(u_i + \beta,\, lo_i) & u_i - x_i < -\beta,
    \end{cases}

(soft-thresholding of :math:`u - x` at :math:`\beta`, then clipping into the box).
FISTA, as in the paper's Algorithm 1, starts from :math:`x^{(0)} = y^{(0)} = x`
and iterates, for :math:`k = 0, \dots, K - 1`,

.. math::
    x^{(k+1)} = S_\beta\big(y^{(k)} - \alpha_k \nabla h(y^{(k)})\big),\qquad
    y^{(k+1)} = x^{(k+1)} + \tfrac{k}{k + 3}\,\big(x^{(k+1)} - x^{(k)}\big),

with the polynomial (square-root) decay of the reference code,
:math:`\alpha_k = \alpha_0 (1 - k / K)^{1/2}`. :math:`y` is the slack
(momentum) variable; it may leave the box, :math:`x^{(k)}` never does. ISTA is
the same iteration with :math:`y^{(k+1)} = x^{(k+1)}`. The threshold is
:math:`\beta`, not :math:`\alpha_k \beta`, as in the paper and its code.

Each iterate :math:`x^{(k+1)}` that the model classifies as wanted (with margin at
least :math:`\kappa`) is a candidate; per example the attack keeps the
candidate of smallest distance under the *decision rule*: ``"en"`` the
elastic-net distance :math:`\|\delta\|_2^2 + \beta\|\delta\|_1`, ``"l1"`` the
:math:`L_1` distance :math:`\|\delta\|_1`. The constant :math:`c` is found per
example by the binary search of :func:`jaxadv.cw_l2` (start at ``initial_const``;
lower by bisection after a search step that found a candidate, raise otherwise:
times 10 until bounded, bisection after). Every search step restarts from
:math:`x`.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, overload

import jax
import jax.numpy as jnp

from jaxadv._core.problem import prepare
from jaxadv._core.rows import select_rows
from jaxadv._core.search import UNBOUNDED, bracket
from jaxadv.engine import iterate
from jaxadv.losses import as_onehot, cw_margin, finite_rows
from jaxadv.models import combine_model
from jaxadv.success import AttackResult, as_returned, hits
from jaxadv.threat_models import clip_to_bounds, per_example, row_sum
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, LoopMode, PRNGKey
from jaxadv.validation import check_batch_array, check_finite, check_steps

__all__ = ["ead"]


class _State(NamedTuple):
    x_k: Array  # FISTA iterate, inside the box
    y_k: Array  # slack (momentum) variable
    best_dist: Array  # [batch] decision-rule distance of the best candidate, over all search steps
    best_x: Array  # the corresponding example (x where there is none)
    hit_now: Array  # [batch] bool: a candidate was found during the current search step


class _Operands(NamedTuple):
    params: Any
    x: Array
    labels: Array
    lo: Array
    hi: Array
    const: Array  # [batch] trade-off c of the current search step
    kappa: Array  # [batch] confidence
    beta: Array  # [batch] L1 weight and shrinkage threshold
    lr: Array  # [batch] initial learning rate alpha_0
    l1_rule: Array  # bool scalar: decision rule "l1" (else "en"); traced, so both share one program
    horizon: Array  # K = steps as float32, for the learning-rate decay (traced: no recompile per K)


class _Static(NamedTuple):
    model: Any
    targeted: bool
    dtype: Any
    fista: bool
    num_classes: int


def shrink(u: Array, x: Array, beta: Array, lo: Array, hi: Array) -> Array:
    r"""The projected shrinkage-thresholding operator :math:`S_\beta` (module docstring).

    ``u`` and ``x``: ``[batch, ...]``; ``beta``: scalar or broadcasting against them;
    ``lo``/``hi`` broadcasting against ``x`` (``x`` inside them). Coordinates of
    ``u`` within ``beta`` of ``x`` snap back to ``x``; the others move ``beta``
    towards ``x`` and are clipped into the box.
    """
    d = u - x
    soft = jnp.sign(d) * jnp.maximum(jnp.abs(d) - beta, 0.0)
    return clip_to_bounds(x + soft, lo, hi)


def _distance(d: Array, beta: Array, l1_rule: Array) -> Array:
    """Decision-rule distance of ``[batch, n]`` perturbations: L1, or squared L2 + beta * L1."""
    l1 = row_sum(jnp.abs(d))
    return jnp.where(l1_rule, l1, row_sum(d * d) + beta * l1)


def _ead_body(i: Array, s: _State, operands: _Operands, static: _Static) -> _State:
    params, x, labels, lo, hi, const, kappa, beta, lr, l1_rule, horizon = operands
    model, targeted, dtype, fista, num_classes = static
    logits_fn = combine_model(model, params)
    sign = 1.0 if targeted else -1.0
    onehot = as_onehot(labels, num_classes)
    b = x.shape[0]

    def smooth(y: Array) -> tuple[Array, Array]:
        z = logits_fn(y).astype(jnp.float32)
        margin = sign * cw_margin(z, onehot)
        d = (y - x).reshape(b, -1)
        return jnp.sum(const * jnp.maximum(margin, -kappa) + row_sum(d * d)), z

    g, z = jax.grad(smooth, has_aux=True)(s.y_k)
    # No gradient step from a slack point where the logits or the gradient are not finite.
    finite = finite_rows(z) & jnp.all(jnp.isfinite(g.reshape(b, -1)), axis=1)
    g = select_rows(finite, g, 0.0)
    k = i.astype(jnp.float32)
    step = lr * jnp.sqrt(jnp.maximum(1.0 - k / horizon, 0.0))
    bx = per_example(beta, x)
    x_new = shrink(s.y_k - per_example(step, x) * g, x, bx, lo, hi)
    momentum = k / (k + 3.0) if fista else 0.0
    y_new = x_new + momentum * (x_new - s.x_k)

    xa = as_returned(x_new, dtype, lo, hi)
    za = logits_fn(xa).astype(jnp.float32)
    ok = hits(za, labels, targeted) & (sign * cw_margin(za, onehot) <= -kappa)
    dist = _distance((xa - x).reshape(b, -1), beta, l1_rule)
    better = ok & (dist < s.best_dist)
    return _State(
        x_k=x_new,
        y_k=y_new,
        best_dist=jnp.where(better, dist, s.best_dist),
        best_x=select_rows(better, xa, s.best_x),
        hit_now=s.hit_now | ok,
    )


@overload
def ead(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    targeted: bool = False,
    l1_weight: ArrayLike = 1e-3,
    confidence: ArrayLike = 0.0,
    learning_rate: ArrayLike = 1e-2,
    steps: int = 100,
    binary_search_steps: int = 9,
    initial_const: ArrayLike = 1e-3,
    decision_rule: str = "en",
    fista: bool = True,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
    return_info: Literal[False] = False,
) -> Array: ...


@overload
def ead(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    targeted: bool = False,
    l1_weight: ArrayLike = 1e-3,
    confidence: ArrayLike = 0.0,
    learning_rate: ArrayLike = 1e-2,
    steps: int = 100,
    binary_search_steps: int = 9,
    initial_const: ArrayLike = 1e-3,
    decision_rule: str = "en",
    fista: bool = True,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
    return_info: Literal[True],
) -> AttackResult: ...


@overload
def ead(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    targeted: bool = False,
    l1_weight: ArrayLike = 1e-3,
    confidence: ArrayLike = 0.0,
    learning_rate: ArrayLike = 1e-2,
    steps: int = 100,
    binary_search_steps: int = 9,
    initial_const: ArrayLike = 1e-3,
    decision_rule: str = "en",
    fista: bool = True,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult: ...


def ead(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    targeted: bool = False,
    l1_weight: ArrayLike = 1e-3,
    confidence: ArrayLike = 0.0,
    learning_rate: ArrayLike = 1e-2,
    steps: int = 100,
    binary_search_steps: int = 9,
    initial_const: ArrayLike = 1e-3,
    decision_rule: str = "en",
    fista: bool = True,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult:
    r"""EAD (Chen et al., 2018): an elastic-net (mostly L1) minimal adversarial perturbation.

    Runs ``binary_search_steps`` FISTA optimisations of ``steps`` iterations
    each (see the module docstring) and returns, per example, the successful
    iterate of smallest distance under ``decision_rule``. Success means the
    model's prediction on the returned-dtype iterate is not ``y`` (is ``y``
    when ``targeted``) *and* the margin is at least ``confidence``. The two
    rules select differently among the same candidates: ``"l1"`` returns the
    smallest :math:`\|\delta\|_1` found (the sparsest); ``"en"`` the smallest
    :math:`\|\delta\|_2^2 + \beta\|\delta\|_1`, which may trade some
    :math:`L_1` for a smaller :math:`L_2`. Examples never attacked successfully
    are returned unchanged (:func:`jaxadv.is_adversarial` reports them as
    failures); a point where the logits or the gradient are not finite gives no
    gradient step and is never a success. An empty batch is returned as it is.
    The reference code's optional early abort of a search step is not
    implemented: every search step runs all ``steps``.

    Args:
      logits_fn: model ``x -> logits [batch, C]``.
      x: ``[batch, ...]`` clean inputs inside ``bounds``.
      y: ``[batch]`` labels or ``[batch, C]`` one-hot (targets when ``targeted``);
        ``None``: the model's predictions.
      key: accepted and ignored: the attack draws no random numbers (see
        :doc:`/conventions`).
      targeted: make the model predict ``y``.
      l1_weight: :math:`\beta`, the L1 weight and shrinkage threshold, scalar or
        ``[batch]`` (traced).
      confidence: :math:`\kappa`, scalar or ``[batch]`` (traced).
      learning_rate: :math:`\alpha_0`, scalar or ``[batch]`` (traced).
      steps: FISTA iterations :math:`K` per search step (static).
      binary_search_steps: number of values of :math:`c` tried (static).
      initial_const: first :math:`c`, scalar or ``[batch]`` (traced).
      decision_rule: ``"en"`` or ``"l1"`` (case-insensitive; both rules share one
        compiled program).
      fista: FISTA with the slack variable (``True``, the paper's default) or
        plain ISTA (static).
      bounds: ``(lo, hi)``, scalars or arrays broadcasting against ``x``.
      loop: ``"auto"``, ``"fori"``, ``"compiled"`` or ``"host"`` (see :mod:`jaxadv.engine`).
      return_info: return an :class:`jaxadv.AttackResult` ``(x_adv, success, None)``
        instead of the array (as every attack does).

    Returns:
      The adversarial batch, shape and dtype of ``x``.
    """
    steps = check_steps(steps)
    binary_search_steps = check_steps(binary_search_steps, "binary_search_steps")
    rule = decision_rule.lower() if isinstance(decision_rule, str) else decision_rule
    if rule not in ("en", "l1"):
        raise ValueError(f"decision_rule must be 'en' or 'l1', got {decision_rule!r}")
    p = prepare(logits_fn, x, y, bounds=bounds, targeted=targeted)
    if p.empty:
        return p.output(p.finalize(p.x), targeted=targeted, return_info=return_info)
    b = p.x.shape[0]

    def per_batch(value: ArrayLike, name: str) -> Array:
        return jnp.broadcast_to(check_batch_array(check_finite(value, name, minimum=0.0), p.x, name), (b,))

    kappa = per_batch(confidence, "confidence")
    beta_ = per_batch(l1_weight, "l1_weight")
    lr = per_batch(learning_rate, "learning_rate")
    const = per_batch(initial_const, "initial_const")
    lower = jnp.zeros((b,), jnp.float32)
    upper = jnp.full((b,), UNBOUNDED, jnp.float32)
    best_dist = jnp.full((b,), jnp.inf, jnp.float32)
    best_x = p.x
    static = _Static(p.model, bool(targeted), p.dtype, bool(fista), p.num_classes)
    l1_rule = jnp.asarray(rule == "l1")
    horizon = jnp.asarray(steps, jnp.float32)
    for _ in range(binary_search_steps):
        state = _State(p.x, p.x, best_dist, best_x, jnp.zeros((b,), bool))
        operands = _Operands(p.params, p.x, p.labels, p.lo, p.hi, const, kappa, beta_, lr, l1_rule, horizon)
        state = iterate(_ead_body, state, operands, steps=steps, static=static, loop=loop)
        best_dist, best_x = state.best_dist, state.best_x
        const, lower, upper = bracket(state.hit_now, const, lower, upper)
    return p.output(p.finalize(best_x), targeted=targeted, return_info=return_info)
