r"""JSMA, the Jacobian-based saliency map attack (Papernot et al., 2016), on pairs of features.

JSMA changes few input features (a small :math:`L_0` perturbation) to make the
model predict a target class :math:`t`. Each step takes the Jacobian of the
logits :math:`z` with respect to the :math:`n` flattened features,
:math:`J = \partial z / \partial x \in \mathbb{R}^{C \times n}`, and for every
pair :math:`p \ne q` of features in the search domain :math:`\Gamma`

.. math::
    \alpha_{pq} = J_{t,p} + J_{t,q}, \qquad
    \beta_{pq} = \sum_{j \ne t} (J_{j,p} + J_{j,q}).

With :math:`\theta > 0` (features increased) a pair is admissible when
:math:`\alpha_{pq} > 0` and :math:`\beta_{pq} < 0`, and its saliency is
:math:`\alpha_{pq}\,|\beta_{pq}|`; with :math:`\theta < 0` (features decreased)
the signs flip: :math:`\alpha_{pq} < 0`, :math:`\beta_{pq} > 0`, saliency
:math:`|\alpha_{pq}|\,\beta_{pq}`. The most salient pair :math:`(p, q)` moves by
:math:`\theta`, clipped into the box:

.. math::
    x_p \leftarrow \mathrm{clip}(x_p + \theta,\, lo_p, hi_p), \qquad
    x_q \leftarrow \mathrm{clip}(x_q + \theta,\, lo_q, hi_q).

The search domain holds the features not yet saturated: :math:`x_i < hi_i` when
:math:`\theta > 0`, :math:`x_i > lo_i` when :math:`\theta < 0` (with
:math:`|\theta| \ge hi - lo` every feature chosen saturates at once and leaves
the domain, as in the paper). An example stops when the model predicts
:math:`t`, when no admissible pair is left, or after
:math:`\lfloor \gamma n / 2 \rfloor` steps (at most a fraction :math:`\gamma` of
the features is changed).

The Jacobian of all classes comes from one :func:`jax.jacrev` per step, batched
over the examples with :func:`jax.vmap`; the saliency of all :math:`n^2` pairs is
scored in blocks of rows, so that memory stays at ``batch * block * n`` values.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple, overload

import jax
import jax.numpy as jnp

from jaxadv._core.problem import prepare
from jaxadv._core.rows import select_rows
from jaxadv.engine import iterate
from jaxadv.losses import finite_rows
from jaxadv.models import combine_model, logits
from jaxadv.success import AttackResult, as_returned, hits
from jaxadv.threat_models import clip_to_bounds, per_example
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, LoopMode, PRNGKey
from jaxadv.validation import check_batch_array, value_check

__all__ = ["jsma"]

#: Most saliency values scored at once (``batch * block * n``), about 64 MiB of float32.
_PAIR_BUDGET = 1 << 24


class _State(NamedTuple):
    x_adv: Array  # [batch, ...] current example
    done: Array  # [batch] bool: stopped (success, no admissible pair, or non-finite model)


class _Operands(NamedTuple):
    params: Any
    x: Array
    labels: Array  # [batch] what success is tested against (targets, or the true labels)
    targets: Array  # [batch] the class t whose logit the saliency map raises
    lo: Array  # bounds broadcast to x's shape
    hi: Array
    theta: Array  # [batch]


class _Static(NamedTuple):
    model: Any
    targeted: bool
    dtype: Any
    block: int  # rows of the pair-score matrix scored at once


def best_pair(a: Array, b: Array, domain: Array, *, block: int | None = None) -> tuple[Array, Array, Array]:
    r"""The most salient admissible pair of features, per example.

    For ``a``, ``b``: ``[batch, n]`` (the target's derivatives :math:`J_t` and the
    sum of the others' :math:`\sum_{j \ne t} J_j`, signed so that the wanted
    direction is up: multiplied by :math:`\mathrm{sign}\,\theta`) and ``domain``:
    ``[batch, n]`` bool, maximises :math:`(a_p + a_q)\,(-(b_p + b_q))` over pairs
    :math:`p \ne q` in the domain with :math:`a_p + a_q > 0` and
    :math:`b_p + b_q < 0`. Ties go to the smallest ``p``, then the smallest ``q``
    (``p < q``: the score is symmetric).

    Returns:
      ``(p, q, found)``: ``[batch]`` int32 indices and ``[batch]`` bool, false
      where no pair is admissible (``p``, ``q`` are then meaningless).
    """
    batch, n = a.shape
    if block is None:
        block = max(1, min(n, _PAIR_BUDGET // max(batch * n, 1)))
    rows = -(-n // block) * block
    pad = rows - n
    a_p = jnp.pad(a, ((0, 0), (0, pad)))
    b_p = jnp.pad(b, ((0, 0), (0, pad)))
    d_p = jnp.pad(domain, ((0, 0), (0, pad)))
    idx = jnp.arange(rows, dtype=jnp.int32)
    cols = jnp.arange(n, dtype=jnp.int32)

    def score_rows(blk: tuple[Array, Array, Array, Array]) -> tuple[Array, Array]:
        ar, br, dr, ir = blk  # [batch, block] x 3, [block]
        alpha = ar[:, :, None] + a[:, None, :]
        beta = br[:, :, None] + b[:, None, :]
        ok = dr[:, :, None] & domain[:, None, :] & (ir[:, None] != cols[None, :])[None]
        ok = ok & (alpha > 0) & (beta < 0)
        score = jnp.where(ok, alpha * -beta, -jnp.inf)
        q = jnp.argmax(score, axis=2).astype(jnp.int32)
        return jnp.take_along_axis(score, q[:, :, None], axis=2)[:, :, 0], q

    def blocks(v: Array) -> Array:  # [batch, rows] -> [rows / block, batch, block]
        return jnp.moveaxis(v.reshape(batch, rows // block, block), 1, 0)

    best, q = jax.lax.map(score_rows, (blocks(a_p), blocks(b_p), blocks(d_p), idx.reshape(-1, block)))
    best = jnp.moveaxis(best, 0, 1).reshape(batch, rows)
    q = jnp.moveaxis(q, 0, 1).reshape(batch, rows)
    p = jnp.argmax(best, axis=1).astype(jnp.int32)
    found = jnp.take_along_axis(best, p[:, None], axis=1)[:, 0] > -jnp.inf
    return p, jnp.take_along_axis(q, p[:, None], axis=1)[:, 0], found


def _jsma_body(i: Array, s: _State, operands: _Operands, static: _Static) -> _State:
    del i
    params, x, labels, targets, lo, hi, theta = operands
    model, targeted, dtype, block = static
    logits_fn = combine_model(model, params)
    batch = x.shape[0]

    def all_logits(xi: Array) -> tuple[Array, Array]:
        z = logits_fn(xi[None]).astype(jnp.float32)[0]
        return z, z

    # [batch, C, ...]: every class's gradient in one reverse-mode Jacobian per example.
    jac, z = jax.vmap(jax.jacrev(all_logits, has_aux=True))(s.x_adv)
    jac = jac.reshape(batch, jac.shape[1], -1)
    hit = hits(z, labels, targeted)
    finite = finite_rows(z) & jnp.all(jnp.isfinite(jac.reshape(batch, -1)), axis=1)
    jac = jnp.where(finite[:, None, None], jac, 0.0)
    t_grad = jnp.take_along_axis(jac, targets[:, None, None], axis=1)[:, 0]
    o_grad = jnp.sum(jac, axis=1) - t_grad
    up = theta > 0
    sgn = jnp.where(up, 1.0, -1.0)[:, None]
    xf, lof, hif = (v.reshape(batch, -1) for v in (s.x_adv, lo, hi))
    domain = jnp.where(up[:, None], xf < hif, xf > lof)
    p, q, found = best_pair(sgn * t_grad, sgn * o_grad, domain, block=block)
    n = xf.shape[1]
    moved = jax.nn.one_hot(p, n, dtype=jnp.float32) + jax.nn.one_hot(q, n, dtype=jnp.float32)
    x_new = clip_to_bounds(s.x_adv + per_example(theta, x) * moved.reshape(x.shape), lo, hi)
    x_new = as_returned(x_new, dtype, lo, hi)
    stop = s.done | hit | ~finite | ~found
    return _State(
        x_adv=select_rows(stop, s.x_adv, x_new),
        done=stop,
    )


@overload
def jsma(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    targeted: bool = False,
    theta: ArrayLike = 1.0,
    gamma: float = 0.1,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
    return_info: Literal[False] = False,
) -> Array: ...


@overload
def jsma(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    targeted: bool = False,
    theta: ArrayLike = 1.0,
    gamma: float = 0.1,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
    return_info: Literal[True],
) -> AttackResult: ...


@overload
def jsma(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    targeted: bool = False,
    theta: ArrayLike = 1.0,
    gamma: float = 0.1,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult: ...


def jsma(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    targeted: bool = False,
    theta: ArrayLike = 1.0,
    gamma: float = 0.1,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult:
    r"""JSMA (Papernot et al., 2016): a sparse (:math:`L_0`) targeted attack by saliency maps.

    Runs the pairwise saliency-map iteration of the module docstring for at most
    :math:`\lfloor \gamma n / 2 \rfloor` steps (``n`` the number of features of one
    example); an example stops as soon as it succeeds, or when no admissible
    pair of features is left. The saliency uses the logits (as the reference
    implementations do), not the softmax.

    Targeted (``targeted=True``, the paper's attack): ``y`` holds the targets and
    success means the model predicts them. Untargeted (the default, as for every
    attack of the library): ``y`` holds the true labels (``None``: the model's
    predictions), the target of each example is its most likely other class at
    ``x`` (the largest logit besides ``y``), and success means any prediction
    other than ``y``.

    Examples that do not succeed are returned at their last iterate (check with
    :func:`jaxadv.is_adversarial`); an example at whose iterate the logits or the
    Jacobian are not finite stops there (at ``x`` when they are not finite at
    ``x``). An empty batch is returned as it is.

    Args:
      logits_fn: model ``x -> logits [batch, C]``.
      x: ``[batch, ...]`` clean inputs inside ``bounds``.
      y: ``[batch]`` integer labels or ``[batch, C]`` one-hot (the targets when ``targeted=True``).
      key: accepted and ignored: the attack draws no random numbers (see
        :doc:`/conventions`).
      targeted: see above (static).
      theta: :math:`\theta`, the change of each chosen feature, nonzero, scalar
        or ``[batch]`` (traced); positive increases features, negative decreases them.
      gamma: :math:`\gamma \in (0, 1]`, the largest fraction of features changed
        (static: it sets the number of steps).
      bounds: ``(lo, hi)``, scalars or arrays broadcasting against ``x``.
      loop: ``"auto"``, ``"fori"``, ``"compiled"`` or ``"host"`` (see :mod:`jaxadv.engine`).
      return_info: return an :class:`jaxadv.AttackResult` ``(x_adv, success, None)``
        instead of the array (as every attack does).

    Returns:
      The adversarial batch, shape and dtype of ``x``.
    """
    if isinstance(gamma, jax.core.Tracer) or not isinstance(gamma, (int, float)) or isinstance(gamma, bool):
        raise ValueError(f"gamma must be a Python float in (0, 1] (it is static), got {gamma!r}")
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    p = prepare(logits_fn, x, y, bounds=bounds, targeted=targeted)
    th = jnp.asarray(theta, jnp.float32)
    value_check(
        jnp.all(th != 0) & jnp.all(jnp.isfinite(th)), "theta must be finite and nonzero, got {v}", v=th
    )
    th = jnp.broadcast_to(check_batch_array(th, p.x, "theta"), (p.x.shape[0],))
    n = math.prod(p.x.shape[1:])
    steps = math.floor(gamma * n / 2)
    if p.empty or steps == 0:
        return p.output(p.finalize(p.x), targeted=targeted, return_info=return_info)
    if targeted:
        targets = p.labels
    else:
        z = logits(combine_model(p.model, p.params), p.x)
        others = jnp.where(jax.nn.one_hot(p.labels, p.num_classes) > 0, -jnp.inf, z)
        targets = jnp.argmax(others, axis=1).astype(jnp.int32)
    lo = jnp.broadcast_to(p.lo, p.x.shape)
    hi = jnp.broadcast_to(p.hi, p.x.shape)
    batch = p.x.shape[0]
    block = max(1, min(n, _PAIR_BUDGET // max(batch * n, 1)))
    state = _State(p.x, jnp.zeros((batch,), bool))
    operands = _Operands(p.params, p.x, p.labels, targets, lo, hi, th)
    static = _Static(p.model, bool(targeted), p.dtype, block)
    state = iterate(_jsma_body, state, operands, steps=steps, static=static, loop=loop)
    return p.output(p.finalize(state.x_adv), targeted=targeted, return_info=return_info)
