r"""One batch of an evaluation as a pure function: :func:`evaluate_batch`.

:func:`jaxadv.evaluate` drives whole datasets (batches cut, placed, halved on
out-of-memory errors, checkpointed). A user with a loop of their own (a training
loop that measures robust accuracy every epoch, a data pipeline that is already
sharded) calls the same per-batch computation here, eagerly or inside their own
``jax.jit``, and gathers the batches with :func:`jaxadv.evaluation.tally`::

    suite = resolve_suite("fast", norm="linf")  # resolved once, outside jit
    step = jax.jit(lambda x, y, index: evaluate_batch(
        logits_fn, x, y, suite=suite, eps=8 / 255, key=key, index=index))
    t = tally(suite, eps=8 / 255, norm="linf")
    state = t.init()
    for start in range(0, n, 256):
        xb, yb = x[start:start + 256], y[start:start + 256]
        state = t.update(state, step(xb, yb, start + jnp.arange(len(xb))))
    result = t.finalize(state)  # an EvaluationResult, as evaluate returns

With the same ``key`` and each example's index in the data, every example's
outcome is the one :func:`jaxadv.evaluate` gives it (its attacks draw from keys
folded from that index), whatever the batches.

What differs from the driver: shapes are fixed under ``jit``, so every attack of
the suite runs on every row of the batch, and only the rows it could still
change (correct and not fooled by an earlier member) take its result; the
driver attacks only those rows, which is faster when early members succeed
often. A candidate outside the threat model (beyond the rounding of its dtype)
counts as a failed attack and is counted in ``BatchResult.outside``; called
eagerly, :func:`evaluate_batch` raises then, as :func:`jaxadv.evaluate` does.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv._core.randomised import fix_key
from jaxadv._core.rows import flat
from jaxadv.evaluation.feeding import _check_inputs, _labels
from jaxadv.evaluation.result import MISCLASSIFIED, ROBUST
from jaxadv.evaluation.suites import SuiteAttack, check_suite_norm, resolve_suite
from jaxadv.keys import example_keys, fold_rows, typed_key
from jaxadv.losses import finite_rows
from jaxadv.success import AttackResult
from jaxadv.threat_models import norm_of
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, Norm, PRNGKey
from jaxadv.validation import check_norm

#: Folded into an example's key for the draw of a randomised model that judges it
#: (the driver's :mod:`~jaxadv.evaluation.batch` folds the same).
_PREDICTION = 0x5EED


class BatchResult(NamedTuple):
    """The outcome of one batch: what :func:`evaluate_batch` returns, and what
    :func:`jaxadv.evaluation.tally`'s ``update`` adds up.

    Attributes:
      fooled_by: ``[n]`` int32: index of the first attack of the suite that fooled
        the model, :data:`~jaxadv.evaluation.ROBUST` (-1) if none did,
        :data:`~jaxadv.evaluation.MISCLASSIFIED` (-2) if the clean example was
        already misclassified (or its logits not finite).
      perturbation_norm: ``[n]`` float32: the norm of the stored perturbation (0
        where no attack succeeded).
      queries: ``[n]`` int32: model queries spent by the score-based attacks on the example.
      x_adv: ``[n, ...]`` the successful adversarial example, or the clean one.
      non_finite: ``[k]`` int32: per attack, candidates with a NaN or inf (in the
        example or its logits), each a failed attack.
      non_finite_clean: ``[]`` int32: clean examples with non-finite logits.
      outside: ``[k]`` int32: per attack, finite candidates outside the ball or
        the box beyond float rounding, each a failed attack (always 0 for a
        correct attack; :func:`evaluate_batch` raises on them when called eagerly).
      seconds: ``[k]`` float64 seconds per attack when the driver timed them;
        ``None`` from :func:`evaluate_batch`.
      trace: the traced members' :class:`jaxadv.compose.TraceFlags` per example,
        merged over the members that attacked it, when the driver diagnoses
        (``evaluate(..., diagnose=True)``); ``None`` otherwise.
    """

    fooled_by: Array | np.ndarray
    perturbation_norm: Array | np.ndarray
    queries: Array | np.ndarray
    x_adv: Array | np.ndarray
    non_finite: Array | np.ndarray
    non_finite_clean: Array | np.ndarray | int
    outside: Array | np.ndarray
    seconds: Array | np.ndarray | None = None
    trace: Any = None


def half_ulp(a: Array) -> Array:
    """Half the spacing of ``a``'s float dtype at ``|a|`` (float32): the most that
    rounding a value to that dtype moves it; 0 where there is no spacing (inf, NaN)."""
    m = jnp.abs(a)
    spacing = jnp.nextafter(m, jnp.asarray(jnp.inf, m.dtype)).astype(jnp.float32) - m.astype(jnp.float32)
    return jnp.where(jnp.isfinite(spacing), spacing / 2, 0.0)


def rounding_allowance(x_adv: Array, x: Array, norm: Norm) -> Array:
    """``[n]``: how far rounding each candidate to its dtype may push it out of the ball.

    A feasible float32 point ``x + delta`` rounded to ``x_adv.dtype`` moves by at
    most half an ulp per coordinate (at the rounded value); coordinates equal to
    ``x`` did not move. The allowance is the ``norm`` of those half ulps.
    """
    half = jnp.where(x_adv != x, half_ulp(x_adv), 0.0).reshape(x_adv.shape[0], -1)
    if norm == "linf":
        return jnp.max(half, axis=1, initial=0.0)
    if norm == "l2":
        return jnp.sqrt(jnp.sum(half**2, axis=1))
    return jnp.sum(half, axis=1)


def feasibility(
    x_adv: Array, x: Array, finite: Array, *, eps: float, norm: Norm, lo: Array, hi: Array
) -> tuple[Array, Array, Array]:
    """``(dist, tol, outside)``, each ``[n]``: the candidates' perturbation norms (0 for
    a non-finite one), the tolerance they are held to (float32 noise plus the
    rounding of their dtype), and whether a finite one leaves the ball or the box."""
    n = x_adv.shape[0]
    xa, xf = x_adv.astype(jnp.float32), x.astype(jnp.float32)
    delta = jnp.where(finite.reshape((n,) + (1,) * (xa.ndim - 1)), xa - xf, 0.0)
    dist = norm_of(delta, norm)
    tol = 1e-4 * max(eps, 1e-3) + 1e-5 + rounding_allowance(x_adv, x, norm)
    box = ((xa < lo - 1e-6) | (xa > hi + 1e-6)).reshape(n, -1).any(axis=1)
    return dist, tol, finite & ((dist > eps + tol) | box)


def outside_message(name: str, norm: str, eps: float, dist: Any, tol: Any) -> str:
    """The error of an attack that returned a candidate outside the threat model."""
    return (
        f"attack {name!r} returned examples outside the threat model (max {norm} distance "
        f"{float(dist):.6g} for eps={eps:g} and a float rounding allowance of {float(tol):.3g}, "
        "or outside bounds)"
    )


def _concrete(*arrays: Array) -> bool:
    return not any(isinstance(a, jax.core.Tracer) for a in arrays)


def evaluate_batch(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike,
    *,
    eps: float,
    key: PRNGKey,
    norm: Norm = "linf",
    suite: str | Sequence[str | SuiteAttack] = "standard",
    bounds: Bounds = (0.0, 1.0),
    index: ArrayLike | None = None,
    randomized: bool = False,
) -> BatchResult:
    r"""The suite's per-example worst case on one batch: a pure function, ``jit``-able.

    For each example :math:`(x_i, y_i)`: misclassified clean (:data:`MISCLASSIFIED`),
    else the index of the first attack :math:`a_j` of the suite whose candidate
    :math:`x'_i` is finite, lies in :math:`\{x' : \|x' - x_i\| \le \epsilon\} \cap
    [lo, hi]` and has :math:`\arg\max f(x'_i) \ne y_i`, else :data:`ROBUST`. Success
    is decided by re-predicting the candidates, as in :func:`jaxadv.evaluate`,
    and the stored example is re-predicted once more at the end.

    Args:
      logits_fn: model ``x -> logits`` (``logits_fn(x, key)`` with ``randomized``).
      x: ``[n, ...]`` floating-point inputs inside ``bounds``.
      y: ``[n]`` integer labels.
      eps: radius, raw input units (a Python float: attacks' budgets are static).
      key: PRNG key of the evaluation, the one :func:`jaxadv.evaluate` takes.
      norm: ``"linf"``, ``"l2"`` or ``"l1"``.
      suite: a suite name or members, as :func:`jaxadv.evaluate` takes them; resolve
        it once with :func:`~jaxadv.evaluation.resolve_suite` outside a loop.
      bounds: ``(lo, hi)`` valid input range.
      index: ``[n]`` each example's index in the data (default ``0..n-1``): its key
        is ``fold_in(k, index)`` with ``k`` the attacks' half of ``key``, exactly
        as in :func:`jaxadv.evaluate`, so the same index gives the same outcome in
        any batch. May be traced.
      randomized: the model is ``logits_fn(x, key)``; each example is judged on
        one draw keyed by it, as in :func:`jaxadv.evaluate`.

    Returns:
      A :class:`BatchResult` of arrays (traced under ``jit``).

    Raises:
      ValueError: a bad norm, eps or suite; with concrete values, inputs or labels
        that :func:`jaxadv.evaluate` refuses.
      RuntimeError: called eagerly, an attack returned a candidate outside the
        threat model.
    """
    norm = check_norm(norm)
    if not isinstance(eps, (int, float, np.floating, np.integer)) or not eps >= 0:
        raise ValueError(f"eps must be a float >= 0 (static under jit), got {eps!r}")
    attacks = resolve_suite(suite, norm=norm)
    check_suite_norm(suite, attacks, norm)
    if randomized:
        cannot = [a.name for a in attacks if not a.randomized]
        if cannot:
            raise ValueError(f"randomized=True: {', '.join(cannot)} cannot attack a randomised model")
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    if _concrete(x):  # evaluate's own input checks: dtype, shape, NaN and inf
        _check_inputs(np.asarray(x), "evaluate_batch")
    if not jnp.issubdtype(x.dtype, jnp.floating):  # a traced x: its dtype is still known
        raise ValueError(f"x must be floating point, got dtype {x.dtype}: scale it to the range of bounds")
    if x.ndim < 1 or y.shape != x.shape[:1] or not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(
            f"x must be [n, ...] and y [n] integer labels, got shapes {x.shape} and {y.shape} ({y.dtype})"
        )
    n = x.shape[0]
    if _concrete(y):  # evaluate's label checks (negative labels)
        _labels(np.asarray(y), "evaluate_batch")
    if n == 0:  # nothing to attack: an empty result, without compiling for zero examples
        none = jnp.zeros((0,), jnp.int32)
        counts = jnp.zeros((len(attacks),), jnp.int32)
        clean = jnp.zeros((), jnp.int32)
        return BatchResult(none, jnp.zeros((0,), jnp.float32), none, x, counts, clean, counts)
    k_attacks, _ = jax.random.split(typed_key(key))
    rows = jnp.arange(n) if index is None else jnp.asarray(index)
    keys = example_keys(k_attacks, rows)
    lo, hi = jnp.asarray(bounds[0], jnp.float32), jnp.asarray(bounds[1], jnp.float32)
    judge = fix_key(logits_fn, fold_rows(keys, _PREDICTION)) if randomized else logits_fn
    extra = {"randomized": True} if randomized else {}

    z = jnp.asarray(judge(x), jnp.float32)
    if _concrete(y, z) and n and int(jnp.max(y)) >= z.shape[-1]:
        raise ValueError(
            f"labels must be < {z.shape[-1]} (the model's number of classes), found {int(jnp.max(y))}"
        )
    clean_finite = finite_rows(z)
    correct = clean_finite & (jnp.argmax(z, axis=-1) == y)
    fooled_by = jnp.where(correct, ROBUST, MISCLASSIFIED).astype(jnp.int32)
    dist = jnp.zeros(n, jnp.float32)
    spent = jnp.zeros(n, jnp.int32)
    x_best = x
    non_finite, outside = [], []
    for i, attack in enumerate(attacks):
        open_ = fooled_by == ROBUST  # the rows this member may still change
        attack_keys = fold_rows(keys, zlib.crc32(attack.name.encode()) & 0x7FFFFFFF)
        out = attack.run(logits_fn, x, y, key=attack_keys, eps=eps, norm=norm, bounds=(lo, hi), **extra)
        candidates, q = (out.x_adv, out.queries) if isinstance(out, AttackResult) else (out, None)
        candidates = jnp.asarray(candidates).astype(x.dtype)
        z_adv = jnp.asarray(judge(candidates), jnp.float32)
        finite = finite_rows(flat(candidates)) & finite_rows(z_adv)
        d, tol, off = feasibility(candidates, x, finite, eps=float(eps), norm=norm, lo=lo, hi=hi)
        if _concrete(off) and bool(jnp.any(off & open_)):
            bad = off & open_
            raise RuntimeError(
                outside_message(
                    attack.name, norm, eps, jnp.max(jnp.where(bad, d, 0.0)), jnp.max(jnp.where(bad, tol, 0.0))
                )
            )
        non_finite.append(jnp.sum(open_ & ~finite))
        outside.append(jnp.sum(open_ & off))
        if q is not None:
            spent = spent + jnp.where(open_, jnp.asarray(q).astype(jnp.int32), 0)
        hit = open_ & finite & ~off & (jnp.argmax(z_adv, axis=-1) != y)
        fooled_by = jnp.where(hit, i, fooled_by)
        dist = jnp.where(hit, d, dist)
        x_best = jnp.where(hit.reshape((n,) + (1,) * (x.ndim - 1)), candidates, x_best)
    # The stored examples are the final word: flags agree with re-predicting them.
    zf = jnp.asarray(judge(x_best), jnp.float32)
    lost = (fooled_by >= 0) & ((jnp.argmax(zf, axis=-1) == y) | ~finite_rows(zf))
    fooled_by = jnp.where(lost, ROBUST, fooled_by)
    dist = jnp.where(lost, 0.0, dist)
    x_best = jnp.where(lost.reshape((n,) + (1,) * (x.ndim - 1)), x, x_best)
    ints = lambda v: jnp.asarray(v, jnp.int32).reshape(len(attacks))  # noqa: E731
    return BatchResult(
        fooled_by=fooled_by,
        perturbation_norm=dist,
        queries=spent,
        x_adv=x_best,
        non_finite=ints(jnp.stack(non_finite) if non_finite else jnp.zeros(0)),
        non_finite_clean=jnp.sum(~clean_finite).astype(jnp.int32),
        outside=ints(jnp.stack(outside) if outside else jnp.zeros(0)),
    )
