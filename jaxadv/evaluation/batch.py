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
from jaxadv.evaluation.layout import _Layout
from jaxadv.evaluation.result import MISCLASSIFIED, ROBUST
from jaxadv.evaluation.suites import SuiteAttack
from jaxadv.keys import fold_rows
from jaxadv.success import AttackResult
from jaxadv.threat_models import norm_of
from jaxadv.typing import LogitsFn, Norm

#: Folded into an example's key for the draw of a randomised model that judges it.
_PREDICTION = 0x5EED


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


class _BatchResult(NamedTuple):
    fooled_by: np.ndarray  # [n] int32 codes
    perturbation_norm: np.ndarray  # [n]
    queries: np.ndarray  # [n]
    x_adv: np.ndarray  # [n, ...]
    non_finite: np.ndarray  # [attacks] candidates with a NaN or inf
    non_finite_clean: int
    seconds: np.ndarray  # [attacks]


def _finite_rows(a: np.ndarray) -> np.ndarray:
    return np.asarray(np.isfinite(a.astype(np.float32, copy=False).reshape(a.shape[0], -1)).all(axis=1))


def _half_ulp(a: np.ndarray) -> np.ndarray:
    """Half the spacing of ``a``'s float dtype at ``|a|``: the most that rounding to it moves a value."""
    a = np.ascontiguousarray(a)
    uint: Any = {2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
    bits = a.view(uint) & uint((1 << (8 * a.dtype.itemsize - 1)) - 1)  # |a|: the sign bit cleared
    wide = np.float64 if a.dtype.itemsize == 8 else np.float32
    with np.errstate(invalid="ignore", over="ignore"):  # NaN and the largest float: no spacing
        spacing = (bits + uint(1)).view(a.dtype).astype(wide) - bits.view(a.dtype).astype(wide)
    return np.where(np.isfinite(spacing), spacing / 2, 0.0).astype(np.float32)


def _rounding_allowance(x_adv: np.ndarray, x: np.ndarray, norm: Norm) -> np.ndarray:
    """``[n]``: how far rounding each returned example to its dtype may push it out of the ball.

    A feasible float32 point ``x + delta`` rounded to ``x_adv.dtype`` moves by at
    most half an ulp per coordinate (at the rounded value); coordinates equal to
    ``x`` did not move. The allowance is the norm of those half ulps.
    """
    half = np.where(x_adv != x, _half_ulp(x_adv), 0.0).reshape(x_adv.shape[0], -1)
    if norm == "linf":
        return np.asarray(half.max(axis=1, initial=0.0))
    if norm == "l2":
        return np.asarray(np.sqrt(np.sum(half.astype(np.float64) ** 2, axis=1)), np.float32)
    return np.asarray(np.sum(half, axis=1, dtype=np.float64), np.float32)


def _check_feasible(
    name: str, x_adv: np.ndarray, x: np.ndarray, finite: np.ndarray, s: _Setting
) -> np.ndarray:
    """``[n]`` perturbation norms of the finite candidates (0 elsewhere); raises when
    a finite candidate leaves the ball or the box beyond float rounding."""
    n = x_adv.shape[0]
    if n == 0:
        return np.zeros(0, np.float32)
    xa, xf = x_adv.astype(np.float32), x.astype(np.float32)
    delta = np.where(finite.reshape((n,) + (1,) * (xa.ndim - 1)), xa - xf, 0.0)
    dist = np.asarray(norm_of(jnp.asarray(delta), s.norm))
    tol = 1e-4 * max(s.eps, 1e-3) + 1e-5 + _rounding_allowance(x_adv, x, s.norm)
    outside = ((xa < s.lo - 1e-6) | (xa > s.hi + 1e-6)).reshape(n, -1).any(axis=1)
    bad = finite & ((dist > s.eps + tol) | outside)
    if np.any(bad):
        raise RuntimeError(
            f"attack {name!r} returned examples outside the threat model "
            f"(max {s.norm} distance {dist[bad].max():.6g} for eps={s.eps:g} and a float rounding "
            f"allowance of {tol[bad].max():.3g}, or outside bounds)"
        )
    return dist


def _padded(n: int, rows: int) -> np.ndarray:
    """The row indices of ``n`` examples padded to ``rows`` as :func:`jaxadv.sharding.pad_batch` pads."""
    return np.concatenate([np.arange(n), np.zeros(rows - n, np.int64)])


def _evaluate_batch(
    s: _Setting, xb: np.ndarray, yb: np.ndarray, keys: jax.Array, placed: Any = None
) -> _BatchResult:
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
            **extra,
        )
        # A suite member returns the adversarial array or an AttackResult (with queries).
        candidates, q = (out.x_adv, out.queries) if isinstance(out, AttackResult) else (out, None)
        x_adv = s.layout.fetch(candidates)[: idx.size]
        z_adv = s.layout.logits(judge(sel), candidates)[: idx.size]
        seconds[i] += time.perf_counter() - start
        # A NaN or inf candidate (or logits) decides nothing: the attack failed on that example.
        finite = _finite_rows(x_adv) & np.isfinite(z_adv).all(axis=-1)
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
    return _BatchResult(fooled_by, dist, spent, x_best, non_finite, int(np.sum(~clean_finite)), seconds)
