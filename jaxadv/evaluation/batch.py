"""One batch of an evaluation: the suite's attacks in turn on the examples still
robust, each candidate checked against the threat model and judged by re-prediction."""

from __future__ import annotations

import time
import zlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv import sharding as shd
from jaxadv._core.randomised import fix_key
from jaxadv.compose.bookkeeping import TraceFlags
from jaxadv.evaluation.kernel import _PREDICTION, BatchResult, feasibility, outside_message
from jaxadv.evaluation.layout import _Layout
from jaxadv.evaluation.result import MISCLASSIFIED, ROBUST
from jaxadv.evaluation.suites import SuiteAttack
from jaxadv.keys import fold_rows
from jaxadv.success import AttackResult
from jaxadv.typing import LogitsFn, Norm


class _Setting(NamedTuple):
    """What every batch of one evaluation shares."""

    logits_fn: LogitsFn
    attacks: list[SuiteAttack]
    eps: float
    norm: Norm
    lo: np.ndarray
    hi: np.ndarray
    batch_size: int
    layout: _Layout
    randomized: bool = False
    trace: bool = False  # ask the traced members for their traces (evaluate's diagnose)


def _check_feasible(
    name: str, x_adv: np.ndarray, x: np.ndarray, finite: np.ndarray, s: _Setting
) -> np.ndarray:
    """``[n]`` perturbation norms of the finite candidates (0 elsewhere); raises when
    a finite candidate leaves the ball or the box beyond float rounding
    (:func:`~jaxadv.evaluation.kernel.feasibility`, the kernel's test)."""
    if x_adv.shape[0] == 0:
        return np.zeros(0, np.float32)
    dist, tol, outside = (
        np.asarray(a)
        for a in feasibility(
            jnp.asarray(x_adv), jnp.asarray(x), jnp.asarray(finite), eps=s.eps, norm=s.norm,
            lo=jnp.asarray(s.lo), hi=jnp.asarray(s.hi),
        )
    )  # fmt: skip
    if np.any(outside):
        raise RuntimeError(outside_message(name, s.norm, s.eps, dist[outside].max(), tol[outside].max()))
    return dist


def _padded(n: int, rows: int) -> np.ndarray:
    """The row indices of ``n`` examples padded to ``rows`` as :func:`jaxadv.sharding.pad_batch` pads."""
    return np.concatenate([np.arange(n), np.zeros(rows - n, np.int64)])


def _evaluate_batch(
    s: _Setting, xb: np.ndarray, yb: np.ndarray, keys: jax.Array, placed: Any = None
) -> BatchResult:
    """Attack one batch with the suite: per-example first successful attack, norm, queries.

    ``keys``: ``[n]``, the key of each example (from its index in the data); every
    random draw of an attack on an example comes from that example's key, so the
    results do not depend on how the data is cut into batches.
    ``placed``: the batch's inputs already padded and on the devices, if so.
    """
    n, k = xb.shape[0], len(s.attacks)
    rows = s.layout.size(n, s.batch_size)
    if placed is None or placed.shape[0] != rows:
        placed = shd.pad_batch(xb, rows)
    judge_keys = fold_rows(keys, _PREDICTION)

    def judge(idx: np.ndarray) -> Any:
        """The model that decides success for the rows ``idx`` of the batch: a
        randomised model is judged on one draw per example (from its own key), the
        same draw for its clean and every adversarial prediction."""
        if not s.randomized:
            return s.logits_fn
        return fix_key(s.logits_fn, s.layout.place_keys(judge_keys[idx]))

    extra = {"randomized": True} if s.randomized else {}
    traced = s.trace and any(a.traced for a in s.attacks)
    ever, incomplete, unavailable, seen = (np.zeros(n, bool) for _ in range(4))
    z = s.layout.logits(judge(_padded(n, rows)), placed)[:n]
    if yb.size and yb.max() >= z.shape[-1]:
        raise ValueError(
            f"labels must be < {z.shape[-1]} (the model's number of classes), found {int(yb.max())}"
        )
    clean_finite = np.isfinite(z).all(axis=-1)
    fooled_by = np.where(clean_finite & (np.argmax(z, axis=-1) == yb), ROBUST, MISCLASSIFIED).astype(np.int32)
    dist = np.zeros(n, np.float32)
    spent = np.zeros(n, np.int64)
    x_best = xb.copy()
    non_finite = np.zeros(k, np.int64)
    seconds = np.zeros(k, np.float64)
    for i, attack in enumerate(s.attacks):
        idx = np.nonzero(fooled_by == ROBUST)[0]
        if s.layout.agree(idx.size) == 0:  # all processes stop together
            break
        # A process with nothing left still takes part, with copies of its first example.
        sel = shd.pad_batch(idx if idx.size else np.zeros(1, np.int64), s.layout.size(idx.size, s.batch_size))
        # Per example, keyed by the attack's name too, so that an attack draws the
        # same randomness alone or in a suite.
        attack_keys = fold_rows(keys[sel], zlib.crc32(attack.name.encode()) & 0x7FFFFFFF)
        start = time.perf_counter()
        xs, ys = s.layout.place(xb[sel], yb[sel])
        out = attack.run(
            s.logits_fn,
            xs,
            ys,
            key=s.layout.place_keys(attack_keys),
            eps=s.eps,
            norm=s.norm,
            bounds=(s.lo, s.hi),
            **({**extra, "trace": True} if traced and attack.traced else extra),
        )
        if isinstance(out, AttackResult) and out.trace is not None:
            # As jaxadv.compose.merge_flags: the gradient is unavailable where no
            # member that attacked the example had one.
            f_ever, f_incomplete, f_unavailable = (s.layout.fetch(v)[: idx.size] for v in out.trace)
            ever[idx] |= f_ever
            incomplete[idx] |= f_incomplete
            unavailable[idx] = np.where(seen[idx], unavailable[idx] & f_unavailable, f_unavailable)
            seen[idx] = True
        # A suite member returns the adversarial array or an AttackResult (with queries).
        candidates, q = (out.x_adv, out.queries) if isinstance(out, AttackResult) else (out, None)
        x_adv = s.layout.fetch(candidates)[: idx.size]
        z_adv = s.layout.logits(judge(sel), candidates)[: idx.size]
        seconds[i] += time.perf_counter() - start
        # A NaN or inf candidate (or logits) decides nothing: the attack failed on that example.
        finite = np.isfinite(x_adv.astype(np.float32).reshape(idx.size, -1)).all(axis=1)
        finite &= np.isfinite(z_adv).all(axis=-1)
        non_finite[i] += int(np.sum(~finite))
        d = _check_feasible(attack.name, x_adv, xb[idx], finite, s)
        if q is not None:
            spent[idx] += s.layout.fetch(q)[: idx.size].astype(np.int64)
        success = finite & (np.argmax(z_adv, axis=-1) != yb[idx])
        hit = idx[success]
        fooled_by[hit] = i
        dist[hit] = d[success]
        x_best[hit] = x_adv[success]
    # The stored examples are the final word: flags agree with re-predicting them.
    zf = s.layout.logits(judge(_padded(n, rows)), shd.pad_batch(x_best, rows))[:n]
    lost = (fooled_by >= 0) & ((np.argmax(zf, axis=-1) == yb) | ~np.isfinite(zf).all(axis=-1))
    fooled_by[lost] = ROBUST
    dist[lost] = 0.0
    x_best[lost] = xb[lost]
    trace = TraceFlags(*(jnp.asarray(v) for v in (ever, ~ever & incomplete, unavailable))) if traced else None
    return BatchResult(
        fooled_by, dist, spent, x_best, non_finite, int(np.sum(~clean_finite)), np.zeros(k, np.int64),
        seconds, trace,
    )  # fmt: skip
