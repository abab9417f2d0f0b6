"""Robust accuracy under a suite of attacks, per example, over large datasets."""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxadv.evaluation.checks import masking_checks
from jaxadv.evaluation.result import MISCLASSIFIED, ROBUST, EvaluationResult, write_json_atomic
from jaxadv.evaluation.suites import SuiteAttack, resolve_suite
from jaxadv.models import predict
from jaxadv.threat_models import norm_of
from jaxadv.typing import ArrayLike, Bounds, LogitsFn, Norm, PRNGKey
from jaxadv.validation import check_norm


def _batches(x: Any, y: Any, batch_size: int) -> tuple[Iterator[tuple[np.ndarray, np.ndarray]], int | None]:
    if isinstance(x, (np.ndarray, jax.Array)):
        xs = np.asarray(x)
        if y is None:
            raise ValueError("y is required when x is an array (labels of the evaluated examples)")
        ys = np.asarray(y)
        if ys.shape[:1] != xs.shape[:1]:
            raise ValueError(
                f"x and y must have the same number of examples, got {xs.shape[0]} and {ys.shape[0]}"
            )
        n = xs.shape[0]
        return ((xs[i : i + batch_size], ys[i : i + batch_size]) for i in range(0, n, batch_size)), n
    if y is not None:
        raise ValueError("pass y=None when x is an iterable of (x, y) batches")
    return ((np.asarray(a), np.asarray(b)) for a, b in x), None


def _bucket(n: int, batch_size: int) -> int:
    """Smallest power of two >= n (at least 8), capped at batch_size: few compiled shapes."""
    size = 8
    while size < n:
        size *= 2
    return min(size, batch_size)


def _pad(a: np.ndarray, size: int) -> np.ndarray:
    if a.shape[0] == size:
        return a
    reps = np.concatenate([np.arange(a.shape[0]), np.zeros(size - a.shape[0], int)])
    return a[reps]


def _check_feasible(
    name: str, x_adv: np.ndarray, x: np.ndarray, eps: float, norm: Norm, lo: Any, hi: Any
) -> np.ndarray:
    dist = np.asarray(norm_of(jax.numpy.asarray(x_adv, np.float32) - x.astype(np.float32), norm))
    tol = 1e-4 * max(eps, 1e-3) + 1e-5
    if np.any(dist > eps + tol) or np.any(x_adv < lo - 1e-6) or np.any(x_adv > hi + 1e-6):
        raise RuntimeError(
            f"attack {name!r} returned examples outside the threat model "
            f"(max {norm} distance {dist.max():.6g} for eps={eps:g}, or outside bounds)"
        )
    return dist


def evaluate(
    logits_fn: LogitsFn,
    x: ArrayLike | Iterable[tuple[ArrayLike, ArrayLike]],
    y: ArrayLike | None = None,
    *,
    eps: float,
    norm: Norm = "linf",
    suite: str | Sequence[str | SuiteAttack] = "standard",
    key: PRNGKey,
    batch_size: int = 256,
    bounds: Bounds = (0.0, 1.0),
    progress: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False,
    store_adversarial: bool = False,
    checks: bool = True,
    check_size: int = 128,
) -> EvaluationResult:
    r"""Robust accuracy of ``logits_fn`` under a suite of attacks (per-example worst case).

    An example counts as robust only if the model classifies it correctly and
    *every* attack of the suite fails on it, as in AutoAttack. Examples the
    model already misclassifies are not attacked; later attacks run only on
    the examples still robust. Success is decided by re-predicting the
    returned examples, and every returned example is checked to lie in the
    eps-ball and ``bounds`` (an attack that leaves them raises).

    Args:
      logits_fn: model ``x -> logits``.
      x: ``[n, ...]`` inputs (NumPy or JAX), or an iterable of ``(x, y)``
        batches (then ``y=None``), e.g. a generator reading from disk.
      y: ``[n]`` integer labels when ``x`` is an array.
      eps: radius, raw input units. norm: ``"linf"``, ``"l2"``, ``"l1"``.
      suite: ``"standard"`` (APGD-CE, APGD-T, Square; like AutoAttack's
        standard version), ``"fast"`` (PGD-20 with cross-entropy then PGD-50
        with the CW margin), or a list of names from
        :data:`jaxadv.evaluation.ATTACKS` and :class:`SuiteAttack`.
      key: PRNG key; each batch and attack gets its own fold of it.
      batch_size: examples per compiled call. Array inputs are cut into
        batches of this size; attacks run on the still-robust examples padded
        to a power of two (at most ``log2(batch_size) - 2`` compiled shapes).
      bounds: ``(lo, hi)`` valid input range.
      progress: show a progress bar (tqdm) on the terminal.
      checkpoint: JSON file written after every batch with the partial result,
        so that an interrupted run is not lost.
      resume: continue from ``checkpoint`` when it exists (same eps, norm,
        suite): its examples are skipped.
      store_adversarial: keep the adversarial examples in ``result.x_adv``.
      checks: run the gradient-masking checks of
        :func:`jaxadv.evaluation.masking_checks` on the first ``check_size``
        examples and attach their warnings.

    Returns:
      An :class:`EvaluationResult`; ``result.robust_accuracy`` is the figure.
    """
    check_norm(norm)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    attacks = resolve_suite(suite)
    names = [a.name for a in attacks]
    lo, hi = np.asarray(bounds[0], np.float32), np.asarray(bounds[1], np.float32)
    batches, total = _batches(x, y, batch_size)
    key_attacks, key_checks = jax.random.split(key)

    fooled: list[np.ndarray] = []
    norms: list[np.ndarray] = []
    queries: list[np.ndarray] = []
    advs: list[np.ndarray] = []
    skip = 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if resume and ckpt is not None and ckpt.exists():
        saved = json.loads(ckpt.read_text())
        if saved["eps"] != float(eps) or saved["norm"] != norm or saved["attacks"] != names:
            raise ValueError(f"checkpoint {ckpt} was written for another eps, norm or suite")
        fooled.append(np.asarray(saved["fooled_by"], np.int32))
        norms.append(np.asarray(saved["perturbation_norm"], np.float32))
        queries.append(np.asarray(saved["queries"], np.int64))
        skip = len(saved["fooled_by"])
        if store_adversarial:
            raise ValueError("store_adversarial cannot be combined with resume")

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=skip, unit="ex", desc=f"evaluate {norm} eps={eps:g}")
    check_batch: tuple[np.ndarray, np.ndarray] | None = None
    seen = 0
    for b, (xb, yb) in enumerate(batches):
        if seen + len(xb) <= skip:
            seen += len(xb)
            continue
        if seen < skip:
            xb, yb = xb[skip - seen :], yb[skip - seen :]
            seen = skip
        seen += len(xb)
        if check_batch is None:
            check_batch = (xb[:check_size], yb[:check_size])
        out = _evaluate_batch(
            logits_fn, xb, yb, attacks, jax.random.fold_in(key_attacks, b), eps, norm, (lo, hi), batch_size
        )
        fooled.append(out[0])
        norms.append(out[1])
        queries.append(out[2])
        if store_adversarial:
            advs.append(out[3])
        if ckpt is not None:
            partial = EvaluationResult(
                float(eps),
                norm,
                names,
                np.concatenate(fooled),
                np.concatenate(norms),
                np.concatenate(queries),
            )
            write_json_atomic(ckpt, {**partial.to_dict(), "complete": False})
        if bar is not None:
            bar.update(len(xb))
    if bar is not None:
        bar.close()

    result = EvaluationResult(
        eps=float(eps),
        norm=norm,
        attacks=names,
        fooled_by=np.concatenate(fooled) if fooled else np.zeros(0, np.int32),
        perturbation_norm=np.concatenate(norms) if norms else np.zeros(0, np.float32),
        queries=np.concatenate(queries) if queries else np.zeros(0, np.int64),
        x_adv=np.concatenate(advs) if advs else None,
    )
    if checks and check_batch is not None:
        report = masking_checks(
            logits_fn,
            check_batch[0],
            check_batch[1],
            eps=eps,
            norm=norm,
            key=key_checks,
            bounds=bounds,
            suite_result=result,
            black_box=[a.black_box for a in attacks],
        )
        result.warnings.extend(report.warnings)
        result.checks.update(report.figures)
    if ckpt is not None:
        write_json_atomic(ckpt, {**result.to_dict(), "complete": True})
    return result


def _evaluate_batch(
    logits_fn: LogitsFn,
    xb: np.ndarray,
    yb: np.ndarray,
    attacks: list[SuiteAttack],
    key: PRNGKey,
    eps: float,
    norm: Norm,
    bounds: tuple[np.ndarray, np.ndarray],
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n = xb.shape[0]
    size = _bucket(n, batch_size) if n < batch_size else n
    pred = np.asarray(predict(logits_fn, _pad(xb, size)))[:n]
    fooled_by = np.where(pred == yb, ROBUST, MISCLASSIFIED).astype(np.int32)
    dist = np.zeros(n, np.float32)
    spent = np.zeros(n, np.int64)
    x_best = xb.copy()
    for i, attack in enumerate(attacks):
        idx = np.nonzero(fooled_by == ROBUST)[0]
        if idx.size == 0:
            break
        size = _bucket(idx.size, batch_size)
        sel = _pad(idx, size)
        # Keyed by name, so an attack draws the same randomness alone or in a suite.
        attack_key = jax.random.fold_in(key, zlib.crc32(attack.name.encode()) & 0x7FFFFFFF)
        out = attack.run(logits_fn, xb[sel], yb[sel], key=attack_key, eps=eps, norm=norm, bounds=bounds)
        x_adv = np.asarray(getattr(out, "x_adv", out))
        d = _check_feasible(attack.name, x_adv, xb[sel], eps, norm, *bounds)
        q = getattr(out, "queries", None)
        if q is not None:
            spent[idx] += np.asarray(q)[: idx.size].astype(np.int64)
        success = np.asarray(predict(logits_fn, x_adv)) != yb[sel]
        hit = idx[success[: idx.size]]
        fooled_by[hit] = i
        dist[hit] = d[: idx.size][success[: idx.size]]
        x_best[hit] = x_adv[: idx.size][success[: idx.size]]
    # The stored examples are the final word: flags agree with re-predicting them.
    size = _bucket(n, batch_size) if n < batch_size else n
    final = np.asarray(predict(logits_fn, _pad(x_best, size)))[:n]
    lost = (fooled_by >= 0) & (final == yb)
    fooled_by[lost] = ROBUST
    dist[lost] = 0.0
    x_best[lost] = xb[lost]
    return fooled_by, dist, spent, x_best
