r"""DeepFool (Moosavi-Dezfooli et al., 2016): minimal perturbations by linearising the classifier.

At each step the classifier is linearised around the current point; for each
candidate class :math:`k \ne y`

.. math::
    w_k = \nabla z_k(x_t) - \nabla z_y(x_t),\qquad f_k = z_k(x_t) - z_y(x_t),

the class whose linearised boundary is closest is
:math:`\hat k = \arg\min_k |f_k| / \|w_k\|_q` (:math:`q` the dual norm: 2 for
L2, 1 for L-inf), and the step to that boundary is

.. math::
    r_t = \frac{|f_{\hat k}| + 10^{-4}}{\|w_{\hat k}\|_2^2}\, w_{\hat k} \;\;(L_2),\qquad
    r_t = \frac{|f_{\hat k}| + 10^{-4}}{\|w_{\hat k}\|_1}\, \mathrm{sign}(w_{\hat k}) \;\;(L_\infty).

The steps accumulate into :math:`r = \sum_t r_t` and the candidate is
:math:`x' = \mathrm{clip}_{[lo,hi]}(x + (1 + \text{overshoot})\, r)`. An example
stops (its state freezes inside the compiled loop) as soon as :math:`x'` is
misclassified. The gradients of the candidate classes come from one Jacobian
(:func:`jax.jacrev` of the ``num_candidates`` selected logits, batched), not a
loop of gradients: candidates are ``y`` and the ``num_candidates - 1`` other
classes with the highest clean logits, as in the original code.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, overload

import jax
import jax.numpy as jnp

from jaxadv._core.problem import prepare
from jaxadv._core.rows import select_rows
from jaxadv.engine import iterate
from jaxadv.losses import finite_rows
from jaxadv.models import combine_model, logits
from jaxadv.success import AttackResult, as_returned, hits
from jaxadv.threat_models import clip_to_bounds, norm_of, per_example
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, LoopMode, Norm, PRNGKey
from jaxadv.validation import check_finite, check_norm, check_steps

__all__ = ["deepfool"]


class _State(NamedTuple):
    r: Array  # accumulated perturbation (before overshoot)
    x_adv: Array  # current candidate x + (1 + overshoot) r, clipped
    done: Array  # [batch] bool: stopped (candidate adversarial, or the model not finite there)


class _Operands(NamedTuple):
    params: Any
    x: Array
    candidates: Array  # [batch, k] int32: y first, then the other candidate classes
    lo: Array
    hi: Array
    overshoot: Array


class _Static(NamedTuple):
    model: Any
    norm: Norm
    dtype: Any
    targeted: bool


def _deepfool_body(i: Array, s: _State, operands: _Operands, static: _Static) -> _State:
    del i
    params, x, candidates, lo, hi, overshoot = operands
    model, norm, dtype, targeted = static
    logits_fn = combine_model(model, params)

    def selected(xi: Array, ci: Array) -> tuple[Array, Array]:
        z = logits_fn(xi[None]).astype(jnp.float32)[0]
        return z[ci], z  # [K] candidate logits of one example

    # Per-example Jacobians [batch, K, ...], one reverse pass per candidate slot.
    # The vmap over the batch is outermost so the batch stays the major axis of
    # every merged dimension: under batch sharding no example leaves its device.
    jac, z = jax.vmap(jax.jacrev(selected, has_aux=True))(s.x_adv, candidates)
    hit = hits(z, candidates[:, 0], targeted)
    finite = finite_rows(z) & jnp.all(jnp.isfinite(jac.reshape(jac.shape[0], -1)), axis=1)
    jac = select_rows(finite, jac, 0.0)
    z = jnp.where(finite[:, None], z, 0.0)
    picked = jnp.take_along_axis(z, candidates, axis=1)
    f = picked[:, 1:] - picked[:, :1]  # [batch, K-1]
    w = jac[:, 1:] - jac[:, :1]  # [batch, K-1, ...]
    w_flat = w.reshape(w.shape[0], w.shape[1], -1)
    # The dual norm of each w_k: L1 for an L-inf attack, L2 for an L2 one.
    dual = norm_of(w_flat.reshape(-1, w_flat.shape[-1]), "l1" if norm == "linf" else "l2").reshape(f.shape)
    dist = jnp.abs(f) / jnp.maximum(dual, 1e-12)
    if targeted:
        # The target must overtake every class ahead of it: head for the farthest
        # of their linearised boundaries, against the gradient of z_k - z_t.
        best = jnp.argmax(jnp.where(f >= 0, dist, -1.0), axis=1)
        w_flat = -w_flat
    else:
        best = jnp.argmin(dist, axis=1)
    w_k = jnp.take_along_axis(w_flat, best[:, None, None], axis=1)[:, 0].reshape(x.shape)
    f_k = jnp.take_along_axis(f, best[:, None], axis=1)[:, 0]
    dual_k = jnp.take_along_axis(dual, best[:, None], axis=1)[:, 0]
    if norm == "linf":
        step = per_example((jnp.abs(f_k) + 1e-4) / jnp.maximum(dual_k, 1e-12), x) * jnp.sign(w_k)
    else:
        plain = per_example((jnp.abs(f_k) + 1e-4) / jnp.maximum(dual_k**2, 1e-12), x) * w_k
        # Where ||w||^2 overflows (huge logits), divide by ||w|| twice instead.
        safe = jnp.maximum(dual_k, 1e-12)
        split = per_example((jnp.abs(f_k) + 1e-4) / safe, x) * (w_k / per_example(safe, x))
        step = select_rows(jnp.isfinite(dual_k**2), plain, split)
    r = s.r + step
    x_new = as_returned(clip_to_bounds(x + (1.0 + overshoot) * r, lo, hi), dtype, lo, hi)
    # Examples whose current candidate already fools the model keep their state;
    # those whose candidate makes the model (or its Jacobian) non-finite stop at x.
    failed = ~s.done & ~hit & ~finite
    stop = hit | s.done
    x_adv = select_rows(stop, s.x_adv, x_new)
    return _State(
        r=select_rows(stop, s.r, r),
        x_adv=select_rows(failed, x, x_adv),
        done=s.done | hit | failed,
    )


@overload
def deepfool(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    steps: int = 50,
    overshoot: ArrayLike = 0.02,
    norm: Norm = "l2",
    targeted: bool = False,
    num_candidates: int = 10,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
    return_info: Literal[False] = False,
) -> Array: ...


@overload
def deepfool(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    steps: int = 50,
    overshoot: ArrayLike = 0.02,
    norm: Norm = "l2",
    targeted: bool = False,
    num_candidates: int = 10,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
    return_info: Literal[True],
) -> AttackResult: ...


@overload
def deepfool(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    steps: int = 50,
    overshoot: ArrayLike = 0.02,
    norm: Norm = "l2",
    targeted: bool = False,
    num_candidates: int = 10,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult: ...


def deepfool(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    steps: int = 50,
    overshoot: ArrayLike = 0.02,
    norm: Norm = "l2",
    targeted: bool = False,
    num_candidates: int = 10,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult:
    r"""DeepFool (Moosavi-Dezfooli et al., 2016), L2 or L-inf, untargeted or targeted.

    Runs the iteration of the module docstring for at most ``steps`` steps per
    example (an example stops once its candidate is misclassified), and returns
    the candidate :math:`x + (1 + \text{overshoot}) r` clipped into ``bounds``.
    There is no eps: the attack looks for a small perturbation that crosses the
    nearest decision boundary. An example that is misclassified from the start
    is returned unchanged; one that never crosses within ``steps`` is returned at
    its last candidate (check with :func:`jaxadv.is_adversarial`). An example at
    whose candidate the logits or their Jacobian are not finite stops and is
    returned unchanged (in particular when they are not finite at ``x``). An
    empty batch is returned as it is. The model needs at least 2 classes.

    Targeted (``targeted=True``, ``y`` the targets :math:`t`): the candidates are
    :math:`t` and the ``num_candidates - 1`` other classes with the highest clean
    logits; each step moves against :math:`w_k = \nabla z_k - \nabla z_t` to the
    farthest linearised boundary among the candidates still ahead of :math:`t`
    (:math:`f_k = z_k - z_t \ge 0`), and an example stops once :math:`t` is
    predicted. Examples already predicted as their target are returned unchanged.

    Args:
      logits_fn: model ``x -> logits [batch, C]``.
      x: ``[batch, ...]`` clean inputs inside ``bounds``.
      y: ``[batch]`` integer labels or ``[batch, C]`` one-hot; ``None``: the model's predictions (the
        original algorithm). With ``targeted=True``: the target classes (required).
      key: accepted and ignored: the attack draws no random numbers (see
        :doc:`/conventions`).
      steps: maximum number of iterations (static).
      overshoot: :math:`\eta`, scalar or ``[batch]`` (traced; the paper uses 0.02).
      norm: ``"l2"`` or ``"linf"`` (static).
      targeted: move towards the classes ``y`` instead of away from them (static).
      num_candidates: classes considered, ``y`` included (static; capped at ``C``).
      bounds: ``(lo, hi)``, scalars or arrays broadcasting against ``x``.
      loop: ``"auto"``, ``"fori"``, ``"compiled"`` or ``"host"`` (see :mod:`jaxadv.engine`).
      return_info: return an :class:`jaxadv.AttackResult` ``(x_adv, success, None)``
        instead of the array (as every attack does).

    Returns:
      The adversarial batch, shape and dtype of ``x``.
    """
    norm = check_norm(norm)
    if norm not in ("l2", "linf"):
        raise ValueError(f"deepfool supports norm='l2' or 'linf', got {norm!r}")
    steps = check_steps(steps)
    num_candidates = check_steps(num_candidates, "num_candidates")
    p = prepare(logits_fn, x, y, bounds=bounds, targeted=targeted)
    if num_candidates < 2:
        raise ValueError(f"num_candidates must be >= 2, got {num_candidates}")
    if p.empty:
        return p.output(p.finalize(p.x), targeted=targeted, return_info=return_info)
    k = min(num_candidates, p.num_classes)
    z = logits(combine_model(p.model, p.params), p.x)
    others = jnp.where(jax.nn.one_hot(p.labels, p.num_classes) > 0, -jnp.inf, z)
    # A stable sort, not lax.top_k: ties resolve to the lower class index either
    # way, and a sort along the classes partitions cleanly over a sharded batch.
    top = jnp.argsort(-others, axis=1, stable=True)[:, : k - 1]
    candidates = jnp.concatenate([p.labels[:, None], top], axis=1).astype(jnp.int32)
    ov = check_finite(overshoot, "overshoot", minimum=0.0)
    ov = per_example(ov, p.x)
    state = _State(jnp.zeros_like(p.x), p.x, jnp.zeros((p.x.shape[0],), bool))
    operands = _Operands(p.params, p.x, candidates, p.lo, p.hi, ov)
    static = _Static(p.model, norm, p.dtype, bool(targeted))
    state = iterate(_deepfool_body, state, operands, steps=steps, static=static, loop=loop)
    return p.output(p.finalize(state.x_adv), targeted=targeted, return_info=return_info)
