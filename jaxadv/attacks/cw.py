r"""Carlini & Wagner L2 attack (Carlini & Wagner, 2017).

The perturbation is optimised in an unconstrained variable :math:`w` through the
change of variables

.. math::
    x'(w) = lo + (hi - lo)\,\frac{\tanh(w) + 1}{2},

which keeps :math:`x'` inside the box without clipping (on coordinates with an
infinite bound, where there is no such change of variables, :math:`x'(w) =
\mathrm{clip}(w, lo, hi)`), by minimising per example

.. math::
    \|x'(w) - x\|_2^2 + c \cdot \max\big(z_y(x') - \max_{j \ne y} z_j(x'),\, -\kappa\big)

(untargeted; targeted: :math:`\max(\max_{j \ne t} z_j - z_t, -\kappa)`), with an
optax optimiser (Adam by default) run inside the compiled
loop. The constant :math:`c` is found per example by binary search: it starts at
``initial_const``; after each search step it is lowered (bisection) where the
attack succeeded and raised where it failed (times 10 until a success bounds it
from above, bisection afterwards). Each search step restarts from :math:`x`.
The smallest successful perturbation over all steps and search steps is kept.
"""

from __future__ import annotations

import functools
from typing import Any, Literal, NamedTuple, overload

import jax
import jax.numpy as jnp
import optax

from jaxadv._core.problem import prepare
from jaxadv._core.rows import select_rows
from jaxadv._core.search import UNBOUNDED, bracket
from jaxadv.engine import iterate
from jaxadv.losses import as_onehot, cw_margin, finite_rows
from jaxadv.models import combine_model
from jaxadv.success import AttackResult, as_returned, hits
from jaxadv.threat_models import row_sum
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, LoopMode, PRNGKey
from jaxadv.validation import check_finite, check_steps

__all__ = ["cw_l2"]

#: The default optimiser: Adam with learning rate 0.05. The paper uses 0.01 with up
#: to 10,000 steps per search step; with the default 100 steps, 0.01 cannot move
#: pixels that sit at a bound (where tanh saturates) far enough.
DEFAULT_OPTIMIZER = optax.adam(5e-2)


class _State(NamedTuple):
    w: Array  # tanh-space variable
    opt_state: Any
    best_l2: Array  # [batch] smallest squared L2 of a success, over all search steps
    best_x: Array  # the corresponding example
    hit_now: Array  # [batch] bool: success during the current search step


def _boxed(lo: Array, hi: Array) -> Array:
    """Where both bounds are finite (there the tanh change of variables applies)."""
    return jnp.isfinite(lo) & jnp.isfinite(hi)


def _to_x(w: Array, lo: Array, hi: Array) -> Array:
    boxed = _boxed(lo, hi)
    # Finite stand-ins on unbounded coordinates, so that no inf * 0 reaches the gradient.
    lo_s, span = jnp.where(boxed, lo, 0.0), jnp.where(boxed, hi - lo, 1.0)
    return jnp.where(boxed, lo_s + span * (jnp.tanh(w) + 1.0) * 0.5, jnp.clip(w, lo, hi))


class _Operands(NamedTuple):
    params: Any
    x: Array
    labels: Array
    lo: Array
    hi: Array
    const: Array  # [batch] trade-off c of the current search step
    kappa: Array  # confidence margin


class _Static(NamedTuple):
    model: Any
    optimizer: Any
    targeted: bool
    dtype: Any


def _cw_body(i: Array, s: _State, operands: _Operands, static: _Static) -> _State:
    del i
    params, x, labels, lo, hi, const, kappa = operands
    model, optimizer, targeted, dtype = static
    logits_fn = combine_model(model, params)
    sign = 1.0 if targeted else -1.0

    def objective(w: Array) -> tuple[Array, tuple[Array, Array, Array, Array]]:
        xa = as_returned(_to_x(w, lo, hi), dtype, lo, hi)
        z = logits_fn(xa).astype(jnp.float32)
        margin = sign * cw_margin(z, as_onehot(labels, z.shape[-1]))  # < 0: adversarial
        d = (xa - x).reshape(x.shape[0], -1)
        l2 = row_sum(d * d)
        return jnp.sum(l2 + const * jnp.maximum(margin, -kappa)), (l2, z, margin, xa)

    (_, (l2, z, margin, xa)), g = jax.value_and_grad(objective, has_aux=True)(s.w)
    # No update from a point where the logits or the gradient are not finite.
    finite = finite_rows(z) & jnp.all(jnp.isfinite(g.reshape(g.shape[0], -1)), axis=1)
    g = select_rows(finite, g, 0.0)
    # Success as in the paper (margin at least kappa) and as the model predicts it.
    ok = hits(z, labels, targeted) & (margin <= -kappa)
    better = ok & (l2 < s.best_l2)
    updates, opt_state = optimizer.update(g, s.opt_state, s.w)
    return _State(
        w=optax.apply_updates(s.w, updates),
        opt_state=opt_state,
        best_l2=jnp.where(better, l2, s.best_l2),
        best_x=select_rows(better, xa, s.best_x),
        hit_now=s.hit_now | ok,
    )


@functools.partial(jax.jit, static_argnames=("optimizer",))
def _init_w(x: Array, lo: Array, hi: Array, *, optimizer: Any) -> tuple[Array, Any]:
    boxed = _boxed(lo, hi)
    span = jnp.where(boxed, jnp.maximum(hi - lo, 1e-12), 1.0)
    u = jnp.clip((x - jnp.where(boxed, lo, 0.0)) / span * 2.0 - 1.0, -1.0, 1.0)
    w = jnp.where(boxed, jnp.arctanh(u * 0.999999), x)
    return w, optimizer.init(w)


@overload
def cw_l2(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    confidence: ArrayLike = 0.0,
    steps: int = 100,
    binary_search_steps: int = 9,
    initial_const: ArrayLike = 1e-3,
    optimizer: optax.GradientTransformation | None = None,
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
    return_info: Literal[False] = False,
) -> Array: ...


@overload
def cw_l2(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    confidence: ArrayLike = 0.0,
    steps: int = 100,
    binary_search_steps: int = 9,
    initial_const: ArrayLike = 1e-3,
    optimizer: optax.GradientTransformation | None = None,
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
    return_info: Literal[True],
) -> AttackResult: ...


@overload
def cw_l2(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    confidence: ArrayLike = 0.0,
    steps: int = 100,
    binary_search_steps: int = 9,
    initial_const: ArrayLike = 1e-3,
    optimizer: optax.GradientTransformation | None = None,
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult: ...


def cw_l2(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    confidence: ArrayLike = 0.0,
    steps: int = 100,
    binary_search_steps: int = 9,
    initial_const: ArrayLike = 1e-3,
    optimizer: optax.GradientTransformation | None = None,
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult:
    r"""Carlini & Wagner L2 (2017): the smallest L2 perturbation found by optimisation.

    Runs ``binary_search_steps`` optimisations of ``steps`` steps each (see the
    module docstring). Success at a step means the model's prediction on the
    returned-dtype candidate is not ``y`` (is ``y`` when ``targeted``) *and* the
    margin is at least ``confidence``; the smallest successful perturbation is
    kept per example. Examples never attacked successfully are returned
    unchanged (:func:`jaxadv.is_adversarial` then reports them as failures), as
    are those whose logits are not finite at ``x`` (a point where the logits or
    the gradient are not finite is never a success and gives no update). An
    empty batch is returned as it is.
    The paper's optional early abort of a search step is not implemented: every
    search step runs all ``steps``.

    Args:
      logits_fn: model ``x -> logits [batch, C]``.
      x: ``[batch, ...]`` clean inputs inside ``bounds``.
      y: ``[batch]`` labels or ``[batch, C]`` one-hot (targets when ``targeted``);
        ``None``: the model's predictions.
      key: accepted and ignored: the attack draws no random numbers (see
        :doc:`/conventions`).
      confidence: :math:`\kappa`, scalar or ``[batch]`` (traced).
      steps: optimiser steps per search step (static).
      binary_search_steps: number of values of :math:`c` tried (static).
      initial_const: first :math:`c`, scalar or ``[batch]`` (traced).
      optimizer: any optax ``GradientTransformation`` (static; hashed, so reuse
        one object to avoid recompiling); default :data:`DEFAULT_OPTIMIZER`, Adam with
        learning rate 0.05 (the paper: ``optax.adam(1e-2)`` with ``steps=10_000``).
      targeted: make the model predict ``y``.
      bounds: ``(lo, hi)``, scalars or arrays broadcasting against ``x``.
      loop: ``"auto"``, ``"fori"``, ``"compiled"`` or ``"host"`` (see :mod:`jaxadv.engine`).
      return_info: return an :class:`jaxadv.AttackResult` ``(x_adv, success, None)``
        instead of the array (as every attack does).

    Returns:
      The adversarial batch, shape and dtype of ``x``.
    """
    steps = check_steps(steps)
    binary_search_steps = check_steps(binary_search_steps, "binary_search_steps")
    opt = DEFAULT_OPTIMIZER if optimizer is None else optimizer
    p = prepare(logits_fn, x, y, bounds=bounds, targeted=targeted)
    if p.empty:
        return p.output(p.finalize(p.x), targeted=targeted, return_info=return_info)
    b = p.x.shape[0]
    kappa = jnp.broadcast_to(check_finite(confidence, "confidence", minimum=0.0), (b,))
    const = jnp.broadcast_to(check_finite(initial_const, "initial_const", minimum=0.0), (b,))
    lower = jnp.zeros((b,), jnp.float32)
    upper = jnp.full((b,), UNBOUNDED, jnp.float32)
    best_l2 = jnp.full((b,), jnp.inf, jnp.float32)
    best_x = p.x
    static = _Static(p.model, opt, targeted, p.dtype)
    for _ in range(binary_search_steps):
        w, opt_state = _init_w(p.x, p.lo, p.hi, optimizer=opt)
        state = _State(w, opt_state, best_l2, best_x, jnp.zeros((b,), bool))
        operands = _Operands(p.params, p.x, p.labels, p.lo, p.hi, const, kappa)
        state = iterate(_cw_body, state, operands, steps=steps, static=static, loop=loop)
        best_l2, best_x = state.best_l2, state.best_x
        const, lower, upper = bracket(state.hit_now, const, lower, upper)
    return p.output(p.finalize(best_x), targeted=targeted, return_info=return_info)
