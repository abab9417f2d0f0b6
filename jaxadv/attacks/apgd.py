r"""Auto-PGD (Croce & Hein, 2020): step-size-free PGD with momentum and restarts.

APGD runs projected steepest ascent with a momentum term and halves its step
size at checkpoints when progress stalls, restarting from the best point found:

.. math::
    z^{(k+1)} &= \Pi_S\big(x^{(k)} + \eta^{(k)} d_p(\nabla f(x^{(k)}))\big) \\
    x^{(k+1)} &= \Pi_S\big(x^{(k)} + \alpha (z^{(k+1)} - x^{(k)})
                 + (1 - \alpha)(x^{(k)} - x^{(k-1)})\big)

with :math:`S = B_\epsilon(x) \cap [lo, hi]`, :math:`\alpha = 1` for the first
step and :math:`0.75` afterwards, :math:`\eta^{(0)} = 2\epsilon`, and
:math:`d_p` the steepest-ascent direction of the norm
(:func:`jaxadv.steepest_direction`; projections are :func:`jaxadv.project_to_feasible`).

Checkpoints :math:`w_j = \lceil p_j N \rceil` with :math:`p_0 = 0`,
:math:`p_1 = 0.22` and :math:`p_{j+1} = p_j + \max(p_j - p_{j-1} - 0.03, 0.06)`
(as in the authors' code: windows of ``int(0.22 N)`` steps, shrinking by
``int(0.03 N)`` down to ``int(0.06 N)``, each at least 1). At a checkpoint the
step size of an example is halved, and its iterate and gradient reset to the
best point seen, when

1. the loss increased in at most a fraction :math:`\rho = 0.75` of the steps
   since the last checkpoint (the authors' code tests ``<=``), or
2. the step size was not halved at the previous checkpoint and the best loss
   has not improved since then.

The highest loss point and every adversarial iterate are tracked per example;
an example that has become adversarial is frozen (its state no longer changes
inside the compiled loop) when ``early_stop`` is on. A point where the model's
logits (or the loss, or its gradient) are not finite scores a loss of
:math:`-\infty` and is never adversarial; examples whose clean logits are not
finite are returned unchanged.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv.attacks.base import Problem, prepare
from jaxadv.attacks.iterative import check_finite_step, finite_step
from jaxadv.engine import iterate
from jaxadv.gradients import loss_and_grad
from jaxadv.losses import cross_entropy, dlr, finite_rows, row_scale
from jaxadv.models import combine_model
from jaxadv.success import as_returned, hits
from jaxadv.threat_models import (
    per_example,
    project_to_feasible,
    random_feasible,
    steepest_direction,
    step_along,
)
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, LoopMode, LossFn, Norm, PRNGKey
from jaxadv.validation import check_norm, check_steps, is_traced

__all__ = ["apgd", "apgd_targeted", "dlr", "dlr_targeted"]

_LOSSES: dict[str, LossFn] = {"ce": cross_entropy, "dlr": dlr}


def dlr_targeted(logits: Array, signed: Array) -> Array:
    r"""Targeted DLR loss of APGD-T (Croce & Hein, 2020), per example.

    .. math::
        -\frac{z_y - z_t}{z_{\pi_1} - (z_{\pi_3} + z_{\pi_4}) / 2}

    ``signed`` is ``onehot(y) - onehot(t)`` (``[batch, C]``), so that the loss keeps
    the library's ``(logits, labels) -> [batch]`` signature; APGD-T ascends it.
    Needs at least four classes.
    """
    z = logits.astype(jnp.float32)
    z = z * row_scale(z)  # scale-invariant ratio; the power-of-two scale keeps huge logits finite
    # A sort along the class axis, not lax.top_k: XLA partitions sorts along the
    # batch axis, so batch-sharded logits are not gathered onto one device.
    top = -jnp.sort(-z, axis=-1)[:, :4]
    return -jnp.sum(signed * z, axis=-1) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def checkpoint_schedule(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Which iterations (0-based) end a checkpoint window, and that window's length.

    Windows of ``max(int(0.22 N), 1)`` steps, each next one ``max(int(0.03 N), 1)``
    shorter, never shorter than ``max(int(0.06 N), 1)``: the checkpoints
    :math:`p_{j+1} = p_j + \\max(p_j - p_{j-1} - 0.03, 0.06)` of the paper.
    """
    k = max(int(0.22 * steps), 1)
    shrink = max(int(0.03 * steps), 1)
    k_min = max(int(0.06 * steps), 1)
    is_check = np.zeros(steps, bool)
    window = np.ones(steps, np.float32)
    count = 0
    for i in range(steps):
        count += 1
        if count == k:
            is_check[i], window[i] = True, k
            k = max(k - shrink, k_min)
            count = 0
    return is_check, window


class _State(NamedTuple):
    x: Array  # current iterate
    x_prev: Array  # iterate before the last step (momentum)
    grad: Array  # ascent gradient at x
    eta: Array  # [batch] step size
    x_best: Array  # highest-loss point
    grad_best: Array
    loss_best: Array  # [batch]
    x_adv: Array  # last adversarial iterate found
    found: Array  # [batch] bool
    prev_loss: Array  # [batch] loss at the previous iterate
    n_incr: Array  # [batch] loss increases since the last checkpoint
    loss_best_last: Array  # [batch] best loss at the last checkpoint
    reduced_last: Array  # [batch] bool: step halved at the last checkpoint


def _freeze(new: Any, old: Any, frozen: Array) -> Any:
    def pick(n: Array, o: Array) -> Array:
        return jnp.where(frozen.reshape(frozen.shape + (1,) * (n.ndim - 1)), o, n)

    return jax.tree_util.tree_map(pick, new, old)


def _checked_loss_and_grad(
    logits_fn: LogitsFn, x: Array, loss_labels: Array, loss: LossFn
) -> tuple[Array, Array, Array]:
    """:func:`jaxadv.loss_and_grad`, with a point where the logits, the loss or the
    gradient are not finite scored as loss ``-inf`` (never the best point) with a
    zero gradient (the next step only follows the momentum)."""
    loss_val, logits, grad = loss_and_grad(logits_fn, x, loss_labels, loss=loss, targeted=False)
    ok = finite_step(logits, grad) & jnp.isfinite(loss_val)
    loss_val = jnp.where(ok, loss_val, -jnp.inf)
    grad = jnp.where(per_example(ok, grad) > 0, grad, 0.0)
    return loss_val, logits, grad


def _apgd_body(i: Array, s: _State, operands: Any, static: Any) -> _State:
    params, x, y, loss_labels, lo, hi, eps, is_check, window, rho = operands
    model, norm, loss, dtype, early_stop = static
    logits_fn = combine_model(model, params)
    a = jnp.where(i > 0, 0.75, 1.0)
    z = project_to_feasible(s.x + step_along(s.eta, steepest_direction(s.grad, norm)), x, eps, norm, lo, hi)
    x_new = project_to_feasible(s.x + a * (z - s.x) + (1.0 - a) * (s.x - s.x_prev), x, eps, norm, lo, hi)
    x_new = as_returned(x_new, dtype, lo, hi)
    loss_val, logits, grad = _checked_loss_and_grad(logits_fn, x_new, loss_labels, loss)

    hit = hits(logits, y, False)
    x_adv = _freeze(x_new, s.x_adv, ~hit)
    better = loss_val > s.loss_best
    x_best = _freeze(x_new, s.x_best, ~better)
    grad_best = _freeze(grad, s.grad_best, ~better)
    loss_best = jnp.where(better, loss_val, s.loss_best)
    n_incr = s.n_incr + (loss_val > s.prev_loss).astype(jnp.float32)

    at_check = is_check[i]
    few_increases = n_incr <= window[i] * rho
    stalled = ~s.reduced_last & (s.loss_best_last >= loss_best)
    reduce = at_check & (few_increases | stalled)
    new = _State(
        x=_freeze(x_best, x_new, ~reduce),
        x_prev=s.x,
        grad=_freeze(grad_best, grad, ~reduce),
        eta=jnp.where(reduce, 0.5 * s.eta, s.eta),
        x_best=x_best,
        grad_best=grad_best,
        loss_best=loss_best,
        x_adv=x_adv,
        found=s.found | hit,
        prev_loss=loss_val,
        n_incr=jnp.where(at_check, 0.0, n_incr),
        loss_best_last=jnp.where(at_check, loss_best, s.loss_best_last),
        reduced_last=jnp.where(at_check, reduce, s.reduced_last),
    )
    if early_stop:
        new = _freeze(new, s, s.found)
    return new


@functools.partial(jax.jit, static_argnames=("model", "norm", "loss", "dtype"))
def _apgd_init(
    key: PRNGKey,
    params: Any,
    x: Array,
    y: Array,
    loss_labels: Array,
    lo: Array,
    hi: Array,
    eps: Array,
    found: Array,
    *,
    model: Any,
    norm: Norm,
    loss: LossFn,
    dtype: Any,
) -> _State:
    x0 = as_returned(random_feasible(key, x, eps, norm, lo, hi), dtype, lo, hi)
    loss0, logits, grad = _checked_loss_and_grad(combine_model(model, params), x0, loss_labels, loss)
    eta = jnp.broadcast_to(2.0 * eps, (x.shape[0],)).astype(jnp.float32)
    return _State(
        x=x0,
        x_prev=x0,
        grad=grad,
        eta=eta,
        x_best=x0,
        grad_best=grad,
        loss_best=loss0,
        x_adv=x0,
        found=found | hits(logits, y, False),
        prev_loss=loss0,
        n_incr=jnp.zeros_like(loss0),
        loss_best_last=loss0,
        reduced_last=jnp.ones_like(found),
    )


class _Outcome(NamedTuple):
    x: Array
    found: Array
    loss: Array


def _run(
    p: Problem,
    key: PRNGKey,
    loss_labels: Array,
    loss: LossFn,
    prior: _Outcome,
    *,
    steps: int,
    norm: Norm,
    rho: float,
    early_stop: bool,
    loop: LoopMode,
) -> _Outcome:
    """One APGD run from a random start; merges into ``prior`` (earlier successes win)."""
    init = _apgd_init(
        key,
        p.params,
        p.x,
        p.labels,
        loss_labels,
        p.lo,
        p.hi,
        p.eps,
        prior.found,
        model=p.model,
        norm=norm,
        loss=loss,
        dtype=p.dtype,
    )
    is_check, window = checkpoint_schedule(steps)
    operands = (
        p.params,
        p.x,
        p.labels,
        loss_labels,
        p.lo,
        p.hi,
        p.eps,
        jnp.asarray(is_check),
        jnp.asarray(window),
        jnp.asarray(rho, jnp.float32),
    )
    static = (p.model, norm, loss, p.dtype, early_stop)
    s = iterate(_apgd_body, init, operands, steps=steps, static=static, loop=loop)
    new_hit = s.found & ~prior.found
    higher = ~s.found & ~prior.found & (s.loss_best > prior.loss)
    x_out = _freeze(s.x_adv, prior.x, ~new_hit)
    x_out = _freeze(s.x_best, x_out, ~higher)
    return _Outcome(x_out, prior.found | s.found, jnp.where(higher, s.loss_best, prior.loss))


def _check_common(norm: Norm, rho: float, n_restarts: int, key: PRNGKey) -> Norm:
    """Static checks shared by both APGD variants; returns the canonical norm."""
    norm = check_norm(norm)
    if norm not in ("linf", "l2"):
        raise ValueError(f"APGD supports norm='linf' or 'l2', got {norm!r}")
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    check_steps(n_restarts, "n_restarts")
    if key is None:
        raise ValueError("key is required for the random starts (pass key=jax.random.key(0))")
    return norm


def _start(p: Problem) -> _Outcome:
    b = p.x.shape[0]
    return _Outcome(p.x, jnp.zeros((b,), bool), jnp.full((b,), -jnp.inf, jnp.float32))


@functools.partial(jax.jit, static_argnames=("model",))
def _clean_finite(params: Any, x: Array, *, model: Any) -> Array:
    return finite_rows(combine_model(model, params)(x))


def _all_found(out: _Outcome, skip: Array) -> bool:
    return not is_traced(out.found) and bool(jnp.all(out.found | skip))


def apgd(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey,
    eps: ArrayLike,
    steps: int = 100,
    norm: Norm = "linf",
    loss: str | LossFn = "ce",
    n_restarts: int = 1,
    rho: float = 0.75,
    early_stop: bool = True,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
) -> Array:
    r"""Untargeted Auto-PGD (Croce & Hein, 2020): APGD-CE and APGD-DLR.

    Runs the algorithm of the module docstring ``n_restarts`` times from random
    points of the ball (each restart only matters for examples not yet fooled),
    ascending cross-entropy (``loss="ce"``) or the DLR loss (``loss="dlr"``,
    :func:`jaxadv.dlr`; any ``(logits, onehot) -> [batch]`` callable works too).

    Args:
      logits_fn: model ``x -> logits [batch, C]``.
      x: ``[batch, ...]`` clean inputs inside ``bounds``.
      y: ``[batch]`` labels or ``[batch, C]`` one-hot; ``None``: the model's predictions.
      key: PRNG key for the random starting points.
      eps: radius, scalar or ``[batch]`` (traced).
      steps: iterations per restart :math:`N` (static).
      norm: ``"linf"`` or ``"l2"``.
      loss: ``"ce"``, ``"dlr"`` or a loss callable (static).
      n_restarts: number of random restarts (static).
      rho: the fraction of condition 1 (static).
      early_stop: freeze an example once it is adversarial (its returned example
        is then the first adversarial iterate; off, the last one).
      bounds: ``(lo, hi)``, scalars or arrays broadcasting against ``x``.
      loop: ``"auto"``, ``"fori"``, ``"compiled"`` or ``"host"`` (see :mod:`jaxadv.engine`).

    Returns:
      The adversarial batch, shape and dtype of ``x``: for each example an
      adversarial iterate when one was found, otherwise the highest-loss point.
      Use :func:`jaxadv.is_adversarial` (or :func:`jaxadv.with_success`) for the
      per-example success mask.
    """
    norm = _check_common(norm, rho, n_restarts, key)
    steps = check_steps(steps)
    loss_fn = _LOSSES[loss] if isinstance(loss, str) and loss in _LOSSES else loss
    if isinstance(loss_fn, str):
        raise ValueError(f"loss must be 'ce', 'dlr' or a callable, got {loss!r}")
    p = prepare(logits_fn, x, y, bounds=bounds, eps=eps)
    if loss_fn is dlr and p.num_classes < 3:
        raise ValueError(
            f"loss='dlr' needs at least 3 classes (it divides by z_1 - z_3), got {p.num_classes}; "
            "use loss='ce'"
        )
    check_finite_step(p.eps, p.lo, p.hi, "eps")
    if p.empty:
        return p.finalize(p.x)
    clean_bad = ~_clean_finite(p.params, p.x, model=p.model)
    loss_labels = p.labels if p.labels.ndim == 2 else jax.nn.one_hot(p.labels, p.num_classes)
    out = _start(p)
    for r in range(n_restarts):
        out = _run(
            p,
            jax.random.fold_in(key, r),
            loss_labels,
            loss_fn,
            out,
            steps=steps,
            norm=norm,
            rho=rho,
            early_stop=early_stop,
            loop=loop,
        )
        if _all_found(out, clean_bad):
            break
    return p.finalize(jnp.where(per_example(clean_bad, p.x) > 0, p.x, out.x))


def apgd_targeted(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey,
    eps: ArrayLike,
    steps: int = 100,
    norm: Norm = "linf",
    n_target_classes: int = 9,
    n_restarts: int = 1,
    rho: float = 0.75,
    early_stop: bool = True,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
) -> Array:
    r"""APGD-T (Croce & Hein, 2020): APGD on the targeted DLR loss over the top classes.

    For :math:`k = 2, \dots, n_{target}+1` the target :math:`t` of each example is
    its :math:`k`-th highest clean logit, and APGD (``n_restarts`` random starts
    each) ascends :func:`dlr_targeted`. The goal is untargeted: an example counts
    as fooled as soon as any run makes the model predict a class other than
    ``y``; later runs only matter for examples not yet fooled (and are skipped
    altogether when every example already is, outside ``jit``).

    Args:
      logits_fn, x, y, key, eps, steps, norm, rho, early_stop, bounds, loop: as in
        :func:`apgd`. ``y`` must hold integer labels.
      n_target_classes: number of target classes tried (static; at most ``C - 1``).
      n_restarts: random restarts per target class (static).

    Returns:
      The adversarial batch, shape and dtype of ``x`` (see :func:`apgd`).
    """
    norm = _check_common(norm, rho, n_restarts, key)
    steps = check_steps(steps)
    n_target_classes = check_steps(n_target_classes, "n_target_classes")
    p = prepare(logits_fn, x, y, bounds=bounds, eps=eps)
    if p.labels.ndim != 1:
        raise ValueError("apgd_targeted needs integer labels y of shape [batch]")
    if p.num_classes < 4:
        raise ValueError(f"apgd_targeted needs at least 4 classes, got {p.num_classes}")
    check_finite_step(p.eps, p.lo, p.hi, "eps")
    if p.empty:
        return p.finalize(p.x)
    n_target_classes = min(n_target_classes, p.num_classes - 1)
    clean_logits = combine_model(p.model, p.params)(p.x)
    clean_bad = ~finite_rows(clean_logits)
    clean_order = jnp.argsort(clean_logits, axis=-1)
    onehot_y = jax.nn.one_hot(p.labels, p.num_classes)
    out = _start(p)
    for k in range(2, n_target_classes + 2):
        target = clean_order[:, -k]
        signed = onehot_y - jax.nn.one_hot(target, p.num_classes)
        for r in range(n_restarts):
            out = _run(
                p,
                jax.random.fold_in(key, k * n_restarts + r),
                signed,
                dlr_targeted,
                out,
                steps=steps,
                norm=norm,
                rho=rho,
                early_stop=early_stop,
                loop=loop,
            )
        if _all_found(out, clean_bad):
            break
    return p.finalize(jnp.where(per_example(clean_bad, p.x) > 0, p.x, out.x))
