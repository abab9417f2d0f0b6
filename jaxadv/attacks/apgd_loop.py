"""The loop of :func:`jaxadv.apgd` and :func:`jaxadv.apgd_targeted` (the algorithm is
described in :mod:`jaxadv.attacks.apgd`): the state, the step bodies for L-inf/L2 and
L1, the start point, one run, and the runs over restarts, target classes and
shrinking radii."""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxadv._core.compile import jit
from jaxadv._core.problem import Problem
from jaxadv._core.randomised import EVAL_FOLD, source_model
from jaxadv._core.rows import flat, select_rows
from jaxadv.compose.bookkeeping import Best, BestLoss, objective, record, record_loss
from jaxadv.compose.sources import EOT, LossGradient
from jaxadv.compose.step_sizes import CheckpointHalving, HalvingState, checkpoint_schedule
from jaxadv.engine import iterate
from jaxadv.keys import fold_rows
from jaxadv.models import combine_model
from jaxadv.success import as_returned, hits
from jaxadv.threat_models import (
    project_l1_box,
    project_to_feasible,
    random_feasible,
    row_sum,
    steepest_direction,
    step_along,
)
from jaxadv.typing import Array, LoopMode, LossFn, Norm, PRNGKey
from jaxadv.validation import check_key, check_norm, check_steps, is_traced

_F32_MAX = float(np.finfo(np.float32).max)
# A run's gradient draws use keys folded from its key with this tag, so that
# they are independent of its random start.
_GRAD = 0x6AD


def l1_checkpoint_schedule(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The checkpoints of L1-APGD: every ``max(int(0.04 N), 1)`` iterations (same
    return format as :func:`checkpoint_schedule`)."""
    k = max(int(0.04 * steps), 1)
    is_check = (np.arange(steps) + 1) % k == 0
    return is_check, np.where(is_check, np.float32(k), np.float32(1.0)).astype(np.float32)


def _sparse_direction(grad: Array, topk: Array) -> Array:
    """``sign(g)`` on the coordinates with ``|g|`` at least its ``(1 - topk)``-quantile
    (per example), divided by their number: a unit-L1 ascent direction moving the
    top ``topk`` fraction of coordinates."""
    g = flat(grad)
    n = g.shape[1]
    a = jnp.abs(g)
    idx = jnp.clip(jnp.floor((1.0 - topk) * n), 0, n - 1).astype(jnp.int32)
    # A sort rather than lax.top_k, which a batch-sharded input would all-gather.
    threshold = jnp.take_along_axis(jnp.sort(a, axis=1), idx[:, None], axis=1)
    s = jnp.where(a >= threshold, jnp.sign(g), 0.0)
    return (s / (row_sum(jnp.abs(s))[:, None] + 1e-10)).reshape(grad.shape)


def _sparsity(x_t: Array, x: Array) -> Array:
    """``[batch]`` float32: the number of coordinates where ``x_t`` differs from ``x``."""
    return jnp.sum(flat(x_t != x), axis=1).astype(jnp.float32)


class _State(NamedTuple):
    x: Array  # current iterate
    x_prev: Array  # iterate before the last step (momentum; L-inf/L2)
    grad: Array  # ascent gradient at x
    eta: Array  # [batch] step size
    x_best: Array  # highest-loss point
    grad_best: Array
    loss_best: Array  # [batch]
    x_adv: Array  # last adversarial iterate found
    found: Array  # [batch] bool
    prev_loss: Array  # [batch] loss at the previous iterate
    n_incr: Array  # [batch] loss increases since the last checkpoint (L-inf/L2)
    loss_best_last: Array  # [batch] best loss at the last checkpoint (L-inf/L2)
    reduced_last: Array  # [batch] bool: step halved at the last checkpoint (L-inf/L2)
    topk: Array  # [batch] fraction of coordinates an L1 step moves
    sparsity_last: Array  # [batch] ||x_best - x||_0 at the last L1 checkpoint


class _Operands(NamedTuple):
    """Loop-invariant arrays (traced)."""

    params: Any  # the model's parameters
    x: Array  # clean batch
    labels: Array  # what success is tested against (targets when targeted)
    loss_labels: Array  # [batch, C] labels given to the loss
    lo: Array
    hi: Array
    eps: Array  # this run's radius
    is_check: Array  # [steps] bool
    window: Array  # [steps] checkpoint window lengths
    rho: Array
    key: Array  # [batch] keys of the run's gradient draws
    source: Any  # gradient source (a pytree)
    freeze: Array  # bool: early stop of L1 runs (traced: the stages of shrinking_eps share one program)


class _Static(NamedTuple):
    """Hashable configuration."""

    model: Any
    norm: Norm
    dtype: Any
    early_stop: bool  # L-inf/L2 (L1: the operand ``freeze``)
    targeted: bool
    randomized: bool


def _evaluate(ops: _Operands, static: _Static, x_t: Array, key: PRNGKey) -> tuple[Array, Array, Array]:
    """``(objective, logits, gradient)`` at ``x_t`` from the gradient source: the
    objective is the loss, negated when ``targeted``; a point where the logits, the
    loss or the gradient are not finite scores ``-inf`` (never the best point) with a
    zero gradient (the next step only follows the momentum). The logits are those
    the source saw at ``x_t``, or one more draw of the model when it only saw
    transformed inputs."""
    model = source_model(static.model, ops.params, static.randomized)
    g = ops.source(model, x_t, ops.loss_labels, key=key, targeted=static.targeted)
    loss_val = objective(g.loss, g.ok, static.targeted)
    grad = select_rows(jnp.isfinite(loss_val), g.grad, 0.0)
    logits = g.logits if g.logits is not None else model(x_t, fold_rows(key, EVAL_FOLD))
    return loss_val, logits, grad


def _record(
    s: _State, x_new: Array, loss_val: Array, logits: Array, grad: Array, ops: _Operands, static: _Static
) -> tuple[Array, Array, Array, Array, Array]:
    """Success at ``x_new``, and the new last adversarial iterate, highest-loss point,
    its gradient and its loss (the bookkeeping parts of :mod:`jaxadv.compose`)."""
    adversarial, hit = record(Best(s.x_adv, s.found), x_new, logits, ops.labels, static.targeted)
    best = record_loss(BestLoss(s.x_best, s.grad_best, s.loss_best), x_new, grad, loss_val)
    return hit, adversarial.x_adv, best.x, best.grad, best.objective


def _apgd_body(i: Array, s: _State, ops: _Operands, static: _Static) -> _State:
    """One APGD step for L-inf or L2: momentum step, halving at checkpoints."""
    norm, lo, hi = static.norm, ops.lo, ops.hi
    a = jnp.where(i > 0, 0.75, 1.0)
    z = project_to_feasible(
        s.x + step_along(s.eta, steepest_direction(s.grad, norm)), ops.x, ops.eps, norm, lo, hi
    )
    x_new = project_to_feasible(
        s.x + a * (z - s.x) + (1.0 - a) * (s.x - s.x_prev), ops.x, ops.eps, norm, lo, hi
    )
    x_new = as_returned(x_new, static.dtype, lo, hi)
    loss_val, logits, grad = _evaluate(ops, static, x_new, fold_rows(ops.key, i + 1))
    hit, x_adv, x_best, grad_best, loss_best = _record(s, x_new, loss_val, logits, grad, ops, static)
    # The step-size part: halve at checkpoints and restart from the highest-loss point.
    schedule = HalvingState(
        s.eta, s.n_incr, s.prev_loss, s.loss_best_last, s.reduced_last, ops.is_check, ops.window
    )
    schedule, reduce = CheckpointHalving(ops.rho).update(schedule, i, loss_val, loss_best)
    new = s._replace(
        x=select_rows(~reduce, x_new, x_best),
        x_prev=s.x,
        grad=select_rows(~reduce, grad, grad_best),
        eta=schedule.eta,
        x_best=x_best,
        grad_best=grad_best,
        loss_best=loss_best,
        x_adv=x_adv,
        found=s.found | hit,
        prev_loss=schedule.previous,
        n_incr=schedule.increases,
        loss_best_last=schedule.best_at_check,
        reduced_last=schedule.halved_at_check,
    )
    if static.early_stop:
        new = select_rows(s.found, s, new)
    return new


def _apgd_l1_body(i: Array, s: _State, ops: _Operands, static: _Static) -> _State:
    """One L1-APGD step: sparse step, exact projection, sparsity-driven checkpoints."""
    lo, hi = ops.lo, ops.hi
    x_new = project_l1_box(s.x + step_along(s.eta, _sparse_direction(s.grad, s.topk)), ops.x, ops.eps, lo, hi)
    x_new = as_returned(x_new, static.dtype, lo, hi)
    loss_val, logits, grad = _evaluate(ops, static, x_new, fold_rows(ops.key, i + 1))
    hit, x_adv, x_best, grad_best, loss_best = _record(s, x_new, loss_val, logits, grad, ops, static)

    at_check = ops.is_check[i]
    sparsity = _sparsity(x_best, ops.x)
    # The best point got sparser: take full steps again from there.
    sparser = at_check & (sparsity / s.sparsity_last < 0.95)
    eps = jnp.broadcast_to(ops.eps, s.eta.shape)
    eta = jnp.clip(jnp.where(sparser, eps, s.eta / 1.5), eps / 10.0, eps)
    n = math.prod(ops.x.shape[1:])
    new = s._replace(
        x=select_rows(~sparser, x_new, x_best),
        x_prev=s.x,
        grad=select_rows(~sparser, grad, grad_best),
        eta=jnp.where(at_check, eta, s.eta),
        x_best=x_best,
        grad_best=grad_best,
        loss_best=loss_best,
        x_adv=x_adv,
        found=s.found | hit,
        prev_loss=loss_val,
        topk=jnp.where(at_check, sparsity / n / 1.5, s.topk),
        sparsity_last=jnp.where(at_check, sparsity, s.sparsity_last),
    )
    return select_rows(s.found & ops.freeze, s, new)


@functools.partial(jit, static_argnames=("static",))
def _apgd_init(
    key: PRNGKey, ops: _Operands, found: Array, x_start: Array | None, *, static: _Static
) -> _State:
    """The state at the start point: a random point of the feasible set (``key``),
    or ``x_start`` projected onto it (an L1 stage warm-started from the last one)."""
    if x_start is None:
        x0 = random_feasible(key, ops.x, ops.eps, static.norm, ops.lo, ops.hi)
    else:
        x0 = project_l1_box(x_start, ops.x, ops.eps, ops.lo, ops.hi)
    x0 = as_returned(x0, static.dtype, ops.lo, ops.hi)
    loss0, logits, grad = _evaluate(ops, static, x0, fold_rows(ops.key, 0))
    b = ops.x.shape[0]
    eps_b = jnp.broadcast_to(ops.eps, (b,)).astype(jnp.float32)
    if static.norm == "l1":
        eta = eps_b
        if x_start is None:
            topk, sparsity = (
                jnp.full((b,), 0.2, jnp.float32),
                jnp.full((b,), math.prod(ops.x.shape[1:]), jnp.float32),
            )
        else:
            sparsity = _sparsity(x0, ops.x)
            topk = sparsity / math.prod(ops.x.shape[1:]) / 1.5
    else:
        eta = 2.0 * eps_b
        topk = sparsity = jnp.zeros((b,), jnp.float32)
    return _State(
        x=x0,
        x_prev=x0,
        grad=grad,
        eta=eta,
        x_best=x0,
        grad_best=grad,
        loss_best=loss0,
        x_adv=x0,
        found=found | hits(logits, ops.labels, static.targeted),
        prev_loss=loss0,
        n_incr=jnp.zeros_like(loss0),
        loss_best_last=loss0,
        reduced_last=jnp.ones_like(found),
        topk=topk,
        sparsity_last=sparsity,
    )


class _Outcome(NamedTuple):
    x: Array
    found: Array
    loss: Array


def _gradient_source(loss: LossFn, eot_samples: int, transform: Any, randomized: bool) -> Any:
    """The exact gradient of ``loss``, or its mean over draws when there is randomness."""
    if eot_samples == 1 and transform is None and not randomized:
        return LossGradient(loss)
    return EOT(LossGradient(loss), eot_samples, transform)


def _single_run(
    p: Problem,
    key: PRNGKey,
    loss_labels: Array,
    source: Any,
    found: Array,
    x_start: Array | None,
    *,
    eps: Array,
    steps: int,
    static: _Static,
    early_stop: bool,
    rho: float,
    loop: LoopMode,
    length: int | None = None,
) -> _State:
    """One APGD run of ``steps`` iterations in the ball of radius ``eps``; the
    checkpoint arrays are padded to ``length`` (so that runs of different lengths
    share one compiled loop)."""
    schedule = l1_checkpoint_schedule if static.norm == "l1" else checkpoint_schedule
    is_check, window = schedule(steps)
    if length is not None and length > steps:
        is_check = np.pad(is_check, (0, length - steps))
        window = np.pad(window, (0, length - steps), constant_values=1.0)
    ops = _Operands(
        params=p.params,
        x=p.x,
        labels=p.labels,
        loss_labels=loss_labels,
        lo=p.lo,
        hi=p.hi,
        eps=eps,
        is_check=jnp.asarray(is_check),
        window=jnp.asarray(window),
        rho=jnp.asarray(rho, jnp.float32),
        key=fold_rows(key, _GRAD),
        source=source,
        freeze=jnp.asarray(early_stop),
    )
    l1 = static.norm == "l1"
    static = static._replace(early_stop=early_stop and not l1)
    init = _apgd_init(key, ops, found, x_start, static=static)
    body = _apgd_l1_body if l1 else _apgd_body
    return iterate(body, init, ops, steps=steps, static=static, loop=loop)


def stage_steps(steps: int) -> tuple[int, int, int]:
    """Iterations at :math:`3\\epsilon`, :math:`2\\epsilon` and :math:`\\epsilon` with
    ``shrinking_eps``: ``ceil(0.3 N)``, ``ceil(0.3 N)`` and the rest."""
    first = math.ceil(0.3 * steps)
    return first, first, steps - 2 * first


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
    targeted: bool = False,
    eot_samples: int = 1,
    transform: Any = None,
    randomized: bool = False,
    shrinking_eps: bool = False,
) -> _Outcome:
    """One APGD run from a random start; merges into ``prior`` (earlier successes win).

    ``p.model`` is the model's structure as the loop calls it (for a randomised
    model, the structure of ``logits_fn(x, key)``)."""
    source = _gradient_source(loss, eot_samples, transform, randomized)
    static = _Static(p.model, norm, p.dtype, False, targeted, randomized)
    if shrinking_eps:
        x_start = None
        for stage, (factor, n) in enumerate(zip((3.0, 2.0, 1.0), stage_steps(steps), strict=True)):
            last = factor == 1.0
            s = _single_run(
                p,
                fold_rows(key, stage) if stage else key,
                loss_labels,
                source,
                prior.found if last else jnp.zeros_like(prior.found),
                x_start,
                eps=p.eps * factor,
                steps=n,
                static=static,
                early_stop=early_stop and last,
                rho=rho,
                loop=loop,
                length=steps,
            )
            x_start = s.x_best
    else:
        s = _single_run(
            p,
            key,
            loss_labels,
            source,
            prior.found,
            None,
            eps=p.eps,
            steps=steps,
            static=static,
            early_stop=early_stop,
            rho=rho,
            loop=loop,
        )
    new_hit = s.found & ~prior.found
    higher = ~s.found & ~prior.found & (s.loss_best > prior.loss)
    x_out = select_rows(~new_hit, prior.x, s.x_adv)
    x_out = select_rows(~higher, x_out, s.x_best)
    return _Outcome(x_out, prior.found | s.found, jnp.where(higher, s.loss_best, prior.loss))


def _check_common(
    norm: Norm,
    rho: float,
    num_restarts: int,
    key: PRNGKey,
    eot_samples: int,
    shrinking_eps: bool,
    steps: int,
) -> tuple[Norm, int]:
    """Static checks shared by both APGD variants; returns the canonical norm and ``steps``."""
    norm = check_norm(norm)
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    check_steps(num_restarts, "num_restarts")
    steps = check_steps(steps)
    if key is None:
        raise ValueError("key is required for the random starts (pass key=jax.random.key(0))")
    check_key(key, per_example=True)
    if not isinstance(eot_samples, (int, np.integer)) or isinstance(eot_samples, bool) or eot_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {eot_samples!r}")
    if shrinking_eps and norm != "l1":
        raise ValueError(f"shrinking_eps is part of the L1 version of APGD (norm='l1'), got norm={norm!r}")
    if shrinking_eps and steps < 3:
        raise ValueError(f"shrinking_eps splits the steps into three stages: steps must be >= 3, got {steps}")
    return norm, steps


def _start(p: Problem) -> _Outcome:
    b = p.x.shape[0]
    return _Outcome(p.x, jnp.zeros((b,), bool), jnp.full((b,), -jnp.inf, jnp.float32))


@functools.partial(jit, static_argnames=("model",))
def _clean_logits(params: Any, x: Array, *, model: Any) -> Array:
    return combine_model(model, params)(x)


def _all_found(out: _Outcome, skip: Array) -> bool:
    return not is_traced(out.found) and bool(jnp.all(out.found | skip))
