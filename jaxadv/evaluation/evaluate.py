"""Robust accuracy under a suite of attacks, per example, over large datasets."""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from jaxadv import sharding as shd
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


class _Layout:
    """Where the attacks of one evaluation run: one device, or a batch sharding."""

    def __init__(self, sharding: NamedSharding | None) -> None:
        self.sharding = sharding
        self.multiple = 1 if sharding is None else shd.rows_multiple(sharding)
        self.processes = jax.process_count() if sharding is not None else 1

    def size(self, n: int, batch_size: int) -> int:
        """Rows to feed for ``n`` needed ones: bucketed, a multiple of the device
        share, and the same on every process."""
        size = _bucket(n, batch_size) if n < batch_size else n
        size = -(-size // self.multiple) * self.multiple
        return self.agree(size)

    def agree(self, value: int) -> int:
        """The largest ``value`` over all processes (a collective with several)."""
        if self.processes == 1:
            return value
        return int(np.max(multihost_utils.process_allgather(np.asarray(value, np.int64))))

    def place(self, *arrays: np.ndarray) -> Any:
        if self.sharding is None:
            return arrays
        return shd.place_rows(arrays, self.sharding)

    def fetch(self, out: Any) -> np.ndarray:
        """This process's rows of a result (no communication between processes)."""
        if self.sharding is None:
            return np.asarray(out)
        return np.asarray(shd.local_rows(out))

    def predict(self, logits_fn: LogitsFn, x: np.ndarray) -> np.ndarray:
        (xs,) = self.place(x)
        return self.fetch(predict(logits_fn, xs))

    def gather(self, a: np.ndarray) -> np.ndarray:
        """Every process's ``a``, concatenated in process order (once, at the end)."""
        if self.processes == 1:
            return a
        return np.asarray(multihost_utils.process_allgather(a, tiled=True))


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
    sharding: Mesh | NamedSharding | bool | None = None,
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
      sharding: data parallelism. ``None`` (default): every attack and
        prediction runs on all devices, each batch split along its first axis
        (padded to a multiple of the device count), when there is more than one
        device; one device otherwise. ``True``: always split over all devices.
        ``False``: one device. A :class:`jax.sharding.Mesh` (its ``"batch"``
        axis) or a :class:`jax.sharding.NamedSharding`: split over it. With
        several processes (after :func:`jax.distributed.initialize`) each
        process passes *its own* examples, the same number of them (and of
        batches) on every process; the per-example results are gathered once,
        at the end, and every process receives the same result, holding the
        examples of process 0, then process 1, and so on. ``checkpoint`` is
        then refused, and the masking checks run on each process's first batch.

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
    layout = _Layout(shd.resolve_batch_sharding(sharding))
    batches, total = _batches(x, y, batch_size)
    if layout.processes > 1:
        if checkpoint is not None:
            raise ValueError("checkpoint is not supported when several processes evaluate together")
        if total is not None and layout.agree(-total) != -layout.agree(total):
            raise ValueError("every process must pass the same number of examples")
    key_attacks, key_checks = jax.random.split(key)
    # Parameters copied to every device once, not at every call of a sharded program.
    attacked_fn = logits_fn
    if layout.sharding is not None:
        attacked_fn = shd.replicate(logits_fn, cast(Mesh, layout.sharding.mesh))

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
    if progress and jax.process_index() == 0:
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
            attacked_fn,
            xb,
            yb,
            attacks,
            jax.random.fold_in(key_attacks, b),
            eps,
            norm,
            (lo, hi),
            batch_size,
            layout,
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

    fooled_all = np.concatenate(fooled) if fooled else np.zeros(0, np.int32)
    norms_all = np.concatenate(norms) if norms else np.zeros(0, np.float32)
    queries_all = np.concatenate(queries) if queries else np.zeros(0, np.int64)
    advs_all = np.concatenate(advs) if advs else None
    if layout.processes > 1:
        # The only exchange of results between processes: once, at the end.
        if layout.agree(-len(fooled_all)) != -layout.agree(len(fooled_all)):
            raise ValueError("every process must evaluate the same number of examples")
        fooled_all, norms_all, queries_all = (layout.gather(a) for a in (fooled_all, norms_all, queries_all))
        advs_all = None if advs_all is None else layout.gather(advs_all)
    result = EvaluationResult(
        eps=float(eps),
        norm=norm,
        attacks=names,
        fooled_by=fooled_all,
        perturbation_norm=norms_all,
        queries=queries_all,
        x_adv=advs_all,
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
    layout: _Layout,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n = xb.shape[0]
    pred = layout.predict(logits_fn, _pad(xb, layout.size(n, batch_size)))[:n]
    fooled_by = np.where(pred == yb, ROBUST, MISCLASSIFIED).astype(np.int32)
    dist = np.zeros(n, np.float32)
    spent = np.zeros(n, np.int64)
    x_best = xb.copy()
    for i, attack in enumerate(attacks):
        idx = np.nonzero(fooled_by == ROBUST)[0]
        if layout.agree(idx.size) == 0:  # all processes stop together
            break
        size = layout.size(idx.size, batch_size)
        # A process with nothing left still takes part, with copies of its first example.
        sel = _pad(idx if idx.size else np.zeros(1, np.int64), size)
        # Keyed by name, so an attack draws the same randomness alone or in a suite.
        attack_key = jax.random.fold_in(key, zlib.crc32(attack.name.encode()) & 0x7FFFFFFF)
        xs, ys = layout.place(xb[sel], yb[sel])
        out = attack.run(logits_fn, xs, ys, key=attack_key, eps=eps, norm=norm, bounds=bounds)
        x_adv_dev: Any = getattr(out, "x_adv", out)
        x_adv = layout.fetch(x_adv_dev)
        d = _check_feasible(attack.name, x_adv, xb[sel], eps, norm, *bounds)
        q = getattr(out, "queries", None)
        if q is not None:
            spent[idx] += layout.fetch(q)[: idx.size].astype(np.int64)
        success = layout.fetch(predict(logits_fn, x_adv_dev)) != yb[sel]
        hit = idx[success[: idx.size]]
        fooled_by[hit] = i
        dist[hit] = d[: idx.size][success[: idx.size]]
        x_best[hit] = x_adv[: idx.size][success[: idx.size]]
    # The stored examples are the final word: flags agree with re-predicting them.
    final = layout.predict(logits_fn, _pad(x_best, layout.size(n, batch_size)))[:n]
    lost = (fooled_by >= 0) & (final == yb)
    fooled_by[lost] = ROBUST
    dist[lost] = 0.0
    x_best[lost] = xb[lost]
    return fooled_by, dist, spent, x_best
