"""Robust accuracy under a suite of attacks, per example, over large datasets."""

from __future__ import annotations

import collections
import os
import queue
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxadv import sharding as shd
from jaxadv._core.randomised import fix_key
from jaxadv.evaluation.adaptive import AdaptiveReport, reattack
from jaxadv.evaluation.certified import Certification, CertifiedStream
from jaxadv.evaluation.checkpoint import (
    DataHasher,
    SavedRun,
    check_data,
    check_same_run,
    read_checkpoint,
    run_fingerprint,
    write_checkpoint,
)
from jaxadv.evaluation.checks import masking_checks
from jaxadv.evaluation.diagnostics import NAMES as INDICATOR_NAMES
from jaxadv.evaluation.diagnostics import indicators as attack_failure_indicators
from jaxadv.evaluation.result import MISCLASSIFIED, ROBUST, EvaluationResult
from jaxadv.evaluation.suites import SuiteAttack, check_suite_norm, resolve_suite
from jaxadv.keys import example_keys, fold_rows, typed_key
from jaxadv.models import logits as model_logits
from jaxadv.success import AttackResult
from jaxadv.threat_models import norm_of
from jaxadv.typing import ArrayLike, Bounds, LogitsFn, Norm, PRNGKey
from jaxadv.validation import check_norm

_Batch = tuple[np.ndarray, np.ndarray]


# --- arguments -----------------------------------------------------------------


#: Folded into an example's key for the draw of a randomised model that judges it.
_PREDICTION = 0x5EED
#: Folded into the attacks' key, with the process index, for the examples of an
#: iterator read by one of several processes (their indices in the result are not
#: known in advance).
_PROCESS = 0x9E0C
_DIAGNOSE = 0xD1A6  # folded into each example's key for its indicators of attack failure


def _split_key(key: PRNGKey) -> tuple[PRNGKey, PRNGKey]:
    if key is None:
        raise ValueError("key is required: pass key=jax.random.key(0) (it seeds the attacks' randomness)")
    try:
        k = typed_key(key)
        k1, k2 = jax.random.split(k)
    except (TypeError, ValueError) as e:
        raise ValueError(f"key must be a PRNG key such as jax.random.key(0), got {key!r}") from e
    return k1, k2


def _check_inputs(x: np.ndarray, where: str) -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"x must be floating point, got dtype {x.dtype} ({where}): scale it to the range of bounds, "
            "e.g. x.astype(np.float32) / 255 with bounds=(0, 1), and give eps in that scale (8/255, not 8)"
        )
    if x.ndim < 1:
        raise ValueError(f"x must have a leading example axis, got shape {x.shape}")
    finite = np.isfinite(x.astype(np.float32, copy=False).reshape(x.shape[0], -1)).all(axis=1)
    if not finite.all():
        raise ValueError(
            f"x holds NaN or inf ({where}, example {int(np.argmin(finite))} of it): "
            "robust accuracy on such inputs has no meaning; clean the data first"
        )


def _labels(y: np.ndarray, where: str) -> np.ndarray:
    """Integer labels ``[n]`` from ``[n]`` integers or ``[n, C]`` one-hot rows."""
    if y.dtype.kind in "USOV":
        raise ValueError(f"labels must be integer class indices, got dtype {y.dtype} ({where})")
    if y.ndim == 2:
        if y.dtype.kind not in "biuf" or not (np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=1) == 1)):
            raise ValueError(
                f"labels of shape {y.shape} must be one-hot rows (a single 1, zeros elsewhere) ({where}); "
                "pass [n] integer labels otherwise"
            )
        return np.argmax(y, axis=1).astype(np.int32)
    if y.ndim != 1:
        raise ValueError(f"labels must have shape [n] (or [n, C] one-hot), got {y.shape} ({where})")
    if y.dtype.kind not in "iu":
        raise ValueError(
            f"labels must be integers, got dtype {y.dtype} ({where}); "
            "if they hold class indices, pass y.astype(np.int32)"
        )
    if y.size and y.min() < 0:
        raise ValueError(f"labels must be >= 0, found {int(y.min())} ({where})")
    return y


def _source(x: Any, y: Any, batch_size: int) -> tuple[Iterator[_Batch], int | None]:
    """Checked ``(x, labels)`` pieces and the number of examples (``None`` for an iterator).

    Arrays are checked whole, in slices of ``batch_size``, before anything runs;
    an iterator's batches are checked as they are read.
    """
    if isinstance(x, (np.ndarray, jax.Array)):
        xs = np.asarray(x)
        if y is None:
            raise ValueError("y is required when x is an array (labels of the evaluated examples)")
        ys = np.asarray(y)
        if ys.shape[:1] != xs.shape[:1]:
            raise ValueError(
                f"x and y must have the same number of examples, got {xs.shape[0]} and {ys.shape[0]}"
            )
        labels = _labels(ys, "y")
        n = xs.shape[0]
        for i in range(0, n, batch_size):  # every input is checked before any attack runs
            _check_inputs(xs[i : i + batch_size], f"examples {i} to {min(i + batch_size, n) - 1}")
        return ((xs[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, n, batch_size)), n
    if y is not None:
        raise ValueError("pass y=None when x is an iterable of (x, y) batches")

    def stream() -> Iterator[_Batch]:
        for b, (xb, yb) in enumerate(x):
            xb, yb = np.asarray(xb), np.asarray(yb)
            if xb.shape[:1] != yb.shape[:1]:
                raise ValueError(f"batch {b}: x and y have {xb.shape[0]} and {yb.shape[0]} examples")
            _check_inputs(xb, f"batch {b}")
            yield xb, _labels(yb, f"batch {b}")

    return stream(), None


class _Piece(NamedTuple):
    """Consecutive examples: inputs, labels and, when already on the devices, the
    inputs padded for the clean prediction."""

    x: np.ndarray
    y: np.ndarray
    placed: Any = None


def _join(parts: list[_Piece]) -> _Piece:
    specs = [f"{p.x.dtype}{list(p.x.shape[1:])}" for p in parts]
    if len(set(specs)) > 1:
        other = next(spec for spec in specs if spec != specs[0])
        raise ValueError(
            "the batches of x must share their per-example shape and dtype to be cut into batches of "
            f"batch_size, got {specs[0]} and {other}"
        )
    return _Piece(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))


class _Cutter:
    """A stream of pieces of any sizes, cut into the sizes asked for, in order.

    A piece handed out whole keeps its placement; pieces that are cut or joined
    lose it (the caller places them again).
    """

    def __init__(self, pieces: Iterator[_Piece]) -> None:
        self._pieces = pieces
        self._buffer: collections.deque[_Piece] = collections.deque()
        self._rows = 0
        self._ended = False

    def take(self, rows: int) -> _Piece | None:
        """The next ``rows`` examples (fewer at the end of the data); ``None`` after the end."""
        while self._rows < rows and not self._ended:
            try:
                piece = next(self._pieces)
            except StopIteration:
                self._ended = True
                break
            if len(piece.x):
                self._buffer.append(piece)
                self._rows += len(piece.x)
        parts: list[_Piece] = []
        need = rows
        while need and self._buffer:
            piece = self._buffer.popleft()
            if len(piece.x) > need:
                self._buffer.appendleft(_Piece(piece.x[need:], piece.y[need:]))
                piece = _Piece(piece.x[:need], piece.y[:need])
            parts.append(piece)
            need -= len(piece.x)
        self._rows -= rows - need
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else _join(parts)

    def give_back(self, piece: _Piece) -> None:
        """Put examples taken but not evaluated back in front of the stream."""
        self._buffer.appendleft(piece)
        self._rows += len(piece.x)


class _Size:
    """The batch size, shared with the read-ahead thread (which only reads it)."""

    def __init__(self, value: int) -> None:
        self.value = value


def _pieces(
    source: Iterator[_Batch], skip: int, size: _Size, place: Callable[[np.ndarray, int], Any] | None
) -> Iterator[_Piece]:
    """The data as the evaluation loop takes it: the ``skip`` examples of a resumed
    checkpoint in pieces of at most a batch, then batches of ``size.value`` examples,
    placed on the devices by ``place`` when given."""
    cutter = _Cutter(_Piece(xb, yb) for xb, yb in source)
    while skip > 0 and (piece := cutter.take(min(skip, size.value))) is not None:
        skip -= len(piece.x)
        yield piece
    while (piece := cutter.take(size.value)) is not None:
        yield piece if place is None else piece._replace(placed=place(piece.x, size.value))


_END = object()


class _ReadAhead:
    """The items of an iterator, read by a background thread, at most ``depth`` waiting.

    An exception of the iterator is raised by :meth:`__next__` when its turn
    comes, with its traceback. :meth:`close` stops the thread and waits for it
    (for a read of the iterator already under way, too): the thread never
    outlives its owner's ``try``/``finally``.
    """

    def __init__(self, items: Iterator[Any], depth: int) -> None:
        self._items = items
        self._queue: queue.Queue[tuple[Any, BaseException | None]] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name="jaxadv-evaluate-read-ahead", daemon=True)
        self._thread.start()

    def _put(self, item: Any, error: BaseException | None = None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put((item, error), timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as e:  # noqa: BLE001 - handed over to the consumer, raised there
            self._put(_END, e)

    def __iter__(self) -> _ReadAhead:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        item, error = self._queue.get()
        if item is _END:
            self._done = True
            if error is not None:
                raise error
            raise StopIteration
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._done = True


class _FirstExamples:
    """The first ``limit`` examples of the data (for the masking checks), whatever the batching."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._x: list[np.ndarray] = []
        self._y: list[np.ndarray] = []
        self.count = 0

    def offer(self, start: int, piece: _Piece) -> None:
        """``piece`` holds the examples from index ``start`` on."""
        lo, hi = self.count - start, self.limit - start
        if lo < len(piece.x) and lo < hi:
            self._x.append(piece.x[lo:hi])
            self._y.append(piece.y[lo:hi])
            self.count += len(self._x[-1])

    def batch(self) -> tuple[np.ndarray, np.ndarray] | None:
        if not self._x:
            return None
        return np.concatenate(self._x), np.concatenate(self._y)


# --- device memory ---------------------------------------------------------------------


def _out_of_memory(e: BaseException) -> bool:
    """XLA's error for a buffer that does not fit (raised at compile or run time)."""
    text = str(e)
    return isinstance(e, jax.errors.JaxRuntimeError) and (
        "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()
    )


def _check_batch_size(batch_size: Any, max_batch_size: int) -> None:
    if isinstance(batch_size, str):
        if batch_size != "auto":
            raise ValueError(f"batch_size must be a positive int or 'auto', got {batch_size!r}")
    elif isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise ValueError(f"batch_size must be a positive int or 'auto', got {batch_size!r}")
    elif batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if (
        isinstance(max_batch_size, bool)
        or not isinstance(max_batch_size, (int, np.integer))
        or max_batch_size < 1
    ):
        raise ValueError(f"max_batch_size must be a positive int, got {max_batch_size!r}")


def _first_size(max_batch_size: int, total: int | None, multiple: int) -> int:
    """The size ``batch_size="auto"`` tries first: ``max_batch_size``, or fewer when the
    data is smaller, a multiple of the rows each process feeds its devices."""
    cap = max(multiple, max_batch_size // multiple * multiple)
    return cap if total is None else min(cap, max(multiple, -(-total // multiple) * multiple))


def _halved(size: int, multiple: int) -> int:
    return max(multiple, size // 2 // multiple * multiple)


# --- where the attacks run -------------------------------------------------------


def _bucket(n: int, batch_size: int) -> int:
    """Smallest power of two >= n (at least 8), capped at batch_size: few compiled shapes."""
    size = 8
    while size < n:
        size *= 2
    return min(size, batch_size)


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

    def place_keys(self, keys: jax.Array) -> jax.Array:
        """``[rows]`` keys split over the devices like the rows they belong to."""
        if self.sharding is None:
            return keys
        rows = NamedSharding(self.sharding.mesh, PartitionSpec(self.sharding.spec[0]))
        if self.processes == 1:
            return jax.device_put(keys, rows)
        # A global array is built from NumPy data: the keys travel as their raw data.
        data = shd.place_rows(np.asarray(jax.random.key_data(keys)), rows)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(keys))

    def placer(self) -> Callable[[np.ndarray, int], Any] | None:
        """What the read-ahead thread uses to put a batch's padded inputs on the
        devices; ``None`` with several processes (padding them needs a collective)."""
        if self.processes > 1:
            return None
        sharding = self.sharding
        device = jax.config.jax_default_device  # type: ignore[attr-defined]  # the caller's, thread-local

        def place(xb: np.ndarray, batch_size: int) -> Any:
            padded = shd.pad_batch(xb, self.size(len(xb), batch_size))
            try:
                if sharding is not None:
                    return jax.device_put(padded, sharding)
                with jax.default_device(device):
                    return jax.device_put(padded)
            except jax.errors.JaxRuntimeError as e:
                if _out_of_memory(e):  # the attacks have the memory now: placed later, in turn
                    return None
                raise

        return place

    def fetch(self, out: Any) -> np.ndarray:
        """This process's rows of a result (no communication between processes)."""
        if self.sharding is None:
            return np.asarray(out)
        return np.asarray(shd.local_rows(out))

    def logits(self, logits_fn: LogitsFn, x: Any) -> np.ndarray:
        """Float32 logits of this process's rows of ``x`` (NumPy rows, or placed arrays)."""
        if isinstance(x, np.ndarray):
            (x,) = self.place(x)
        return self.fetch(model_logits(logits_fn, x)).astype(np.float32)

    def gather(self, a: np.ndarray) -> np.ndarray:
        """Every process's ``a``, concatenated in process order (once, at the end)."""
        if self.processes == 1:
            return a
        return np.asarray(multihost_utils.process_allgather(a, tiled=True))


# --- one batch ---------------------------------------------------------------------


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


# --- the whole run --------------------------------------------------------------------


class _Tally:
    """The per-example results so far (a resumed checkpoint's, then each batch's)."""

    def __init__(
        self, names: list[str], start: EvaluationResult | None, keep_adversarial: bool, diagnose: bool = False
    ) -> None:
        self.names = names
        self.keep_adversarial = keep_adversarial
        self.diagnose = diagnose
        self.flags: list[np.ndarray] = []  # [b, len(_DIAGNOSED)] bool per batch, with diagnose
        self.fooled_by: list[np.ndarray] = []
        self.norms: list[np.ndarray] = []
        self.queries: list[np.ndarray] = []
        self.advs: list[np.ndarray] = []
        self.non_finite = np.zeros(len(names), np.int64)
        self.non_finite_clean = 0
        self.seconds = np.zeros(len(names), np.float64)
        self.sessions = 1 if start is None else start.sessions + 1
        if start is not None:
            self.fooled_by.append(start.fooled_by)
            self.norms.append(start.perturbation_norm)
            self.queries.append(start.queries)
            self.non_finite += [start.non_finite.get(n, 0) for n in names]
            self.non_finite_clean = start.non_finite_clean
            self.seconds += [start.seconds.get(n, 0.0) for n in names]
            if diagnose and start.indicators is not None:
                self.flags.append(np.stack([start.indicators[k] for k in _DIAGNOSED], axis=1))

    def add(self, out: _BatchResult) -> None:
        self.fooled_by.append(out.fooled_by)
        self.norms.append(out.perturbation_norm)
        self.queries.append(out.queries)
        if self.keep_adversarial:
            self.advs.append(out.x_adv)
        self.non_finite += out.non_finite
        self.non_finite_clean += out.non_finite_clean
        self.seconds += out.seconds

    def result(
        self, eps: float, norm: str, batch_size: int, wall_seconds: float, layout: _Layout | None = None
    ) -> EvaluationResult:
        """The result so far; with ``layout``, every process's examples gathered (a collective)."""

        def joined(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

        fooled_by = joined(self.fooled_by, np.int32)
        norms = joined(self.norms, np.float32)
        queries = joined(self.queries, np.int64)
        advs = np.concatenate(self.advs) if self.advs else None
        flags = np.concatenate(self.flags) if self.flags else np.zeros((0, len(_DIAGNOSED)), bool)
        non_finite, clean, seconds = self.non_finite, self.non_finite_clean, self.seconds
        if layout is not None and layout.processes > 1:
            # The only exchange of results between processes: once, at the end.
            if layout.agree(-len(fooled_by)) != -layout.agree(len(fooled_by)):
                raise ValueError("every process must evaluate the same number of examples")
            fooled_by, norms, queries = (layout.gather(a) for a in (fooled_by, norms, queries))
            advs = None if advs is None else layout.gather(advs)
            flags = layout.gather(flags)
            k = len(self.names)
            counts = layout.gather(np.append(non_finite, clean)).reshape(-1, k + 1).sum(axis=0)
            non_finite, clean = counts[:k], int(counts[k])
            seconds = layout.gather(seconds).reshape(-1, k).max(axis=0)  # wall time: the slowest process
            wall_seconds = float(layout.gather(np.asarray([wall_seconds], np.float64)).max())
        return EvaluationResult(
            eps=float(eps),
            norm=norm,
            attacks=list(self.names),
            fooled_by=fooled_by,
            perturbation_norm=norms,
            queries=queries,
            x_adv=advs,
            non_finite={n: int(c) for n, c in zip(self.names, non_finite, strict=True)},
            non_finite_clean=int(clean),
            seconds={n: float(t) for n, t in zip(self.names, seconds, strict=True)},
            batch_size=int(batch_size),
            wall_seconds=float(wall_seconds),
            sessions=self.sessions,
            indicators={k: flags[:, i] for i, k in enumerate(_DIAGNOSED)} if self.diagnose else None,
        )


#: The indicators ``evaluate(diagnose=True)`` computes (all but ``transfer_failure``,
#: which needs the surrogate an attack ran on).
_DIAGNOSED = INDICATOR_NAMES[:5]


def _reattack(
    result: EvaluationResult, flagged: list[tuple[np.ndarray, Any, Any, np.ndarray]], logits_fn: LogitsFn,
    **kw: Any,
) -> AdaptiveReport:  # fmt: skip
    """The adaptive re-attack of the flagged robust examples (:mod:`jaxadv.evaluation.adaptive`)."""
    fooled = np.zeros(result.num_examples, bool)
    if not flagged:
        return AdaptiveReport(fooled, {}, {})
    index = np.concatenate([f[0] for f in flagged])
    x = np.concatenate([np.asarray(f[1]) for f in flagged])
    y = np.concatenate([np.asarray(f[2]) for f in flagged])
    flags = np.concatenate([f[3] for f in flagged])
    hit, ran, won = reattack(
        logits_fn, x, y, {k: flags[:, i] for i, k in enumerate(_DIAGNOSED)}, evaluate=evaluate, **kw
    )
    fooled[index[hit]] = True
    return AdaptiveReport(fooled, ran, won)


def _diagnose_batch(
    logits_fn: LogitsFn, x: Any, y: Any, fooled: np.ndarray, keys: Any, *, eps: float, norm: Norm,
    bounds: Bounds, randomized: bool,
) -> np.ndarray:  # fmt: skip
    """``[b, len(_DIAGNOSED)]`` bool: the indicators of attack failure of a batch."""
    ind = attack_failure_indicators(
        logits_fn, jnp.asarray(x), jnp.asarray(y), eps=eps, key=fold_rows(keys, _DIAGNOSE), norm=norm,
        bounds=bounds, fooled=fooled, randomized=randomized,
    )  # fmt: skip
    return np.stack([np.asarray(getattr(ind, k)) for k in _DIAGNOSED], axis=1)


def _non_finite_warnings(result: EvaluationResult) -> list[str]:
    out = [
        f"attack {name!r} returned {count} non-finite candidate(s) (NaN or inf in the example or in the "
        "model's logits on it); each counted as a failed attack, so its example stayed robust against "
        f"{name!r}: the robust accuracy may be overestimated"
        for name, count in result.non_finite.items()
        if count
    ]
    if result.non_finite_clean:
        out.append(
            f"the model returned non-finite logits on {result.non_finite_clean} clean example(s); "
            "they were counted as misclassified"
        )
    return out


def _resume(path: Path, fingerprint: Any) -> SavedRun:
    saved = read_checkpoint(path)
    check_same_run(saved, fingerprint)
    return saved


def evaluate(
    logits_fn: LogitsFn,
    x: ArrayLike | Iterable[tuple[ArrayLike, ArrayLike]],
    y: ArrayLike | None = None,
    *,
    eps: float,
    norm: Norm = "linf",
    suite: str | Sequence[str | SuiteAttack] = "standard",
    key: PRNGKey,
    batch_size: int | Literal["auto"] = 256,
    max_batch_size: int = 1024,
    prefetch: int = 2,
    bounds: Bounds = (0.0, 1.0),
    progress: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    store_adversarial: bool = False,
    checks: bool = True,
    check_size: int = 128,
    sharding: Mesh | NamedSharding | bool | None = None,
    certify: Certification | None = None,
    randomized: bool = False,
    diagnose: bool = False,
    adaptive: bool = False,
    surrogate_fn: LogitsFn | None = None,
) -> EvaluationResult:
    r"""Robust accuracy of ``logits_fn`` under a suite of attacks (per-example worst case).

    An example counts as robust only if the model classifies it correctly and
    *every* attack of the suite fails on it, as in AutoAttack. Examples the
    model already misclassifies are not attacked; later attacks run only on
    the examples still robust. Success is decided by re-predicting the
    returned examples. Every returned example must lie in ``bounds`` and in the
    eps-ball, up to the rounding of its dtype (half an ulp per coordinate,
    which matters for bfloat16 and float16 inputs); an attack that leaves them
    raises. A candidate with a NaN or inf (in the example or in the model's
    logits on it) is a *failed* attack on its example, counted in
    ``result.non_finite`` and reported in ``result.warnings``. See
    :doc:`/numbers` for what each number means and when it is refused.

    Args:
      logits_fn: model ``x -> logits``.
      x: ``[n, ...]`` floating-point inputs (NumPy or JAX) inside ``bounds``, or
        an iterable of ``(x, y)`` NumPy batches of any sizes (then ``y=None``),
        e.g. a generator reading from disk, a Grain loader or tf.data's
        ``dataset.as_numpy_iterator()``. Its batches are cut and joined into
        batches of ``batch_size`` examples; the result depends on the examples
        and their order, never on how the iterator batches them (its batches
        must then share their per-example shape and dtype). Integer inputs
        (``uint8`` images) are refused: scale them, e.g. ``x / 255`` with
        ``bounds=(0, 1)``. NaN or inf is refused.
      y: ``[n]`` integer labels, or ``[n, C]`` one-hot rows (taken as their
        argmax), when ``x`` is an array. Float, string and out-of-range labels
        are refused.
      eps: radius, raw input units. norm: ``"linf"``, ``"l2"``, ``"l1"`` (any case:
        ``"Linf"``, ``"L2"``).
      suite: ``"standard"``, ``"plus"`` or ``"rand"`` (AutoAttack's versions:
        ``"standard"`` is APGD-CE, APGD-T, FAB-T and Square, in L1 in
        AutoAttack's L1 configurations; see :mod:`jaxadv.evaluation.suites`
        for every member and budget), ``"fast"`` (PGD-20 with cross-entropy then
        PGD-50 with the CW margin; every norm), or a list of names from
        :data:`jaxadv.evaluation.ATTACKS` and :class:`SuiteAttack`.
        A suite with a member that does not support ``norm`` is refused before
        anything runs.
      key: PRNG key. Each example gets its own fold of it, by its index in the
        data (:func:`jaxadv.example_keys`), then one fold per attack (by name):
        every random draw of an attack on an example comes from that key. An
        example's results therefore do not depend on the batch size, the
        number of devices, ``"auto"`` halving or a resume (see
        :doc:`/numbers` for the one proviso, the model's own arithmetic).
      batch_size: examples per compiled call: the data is cut into batches of
        this size; attacks run on the still-robust examples padded to a power
        of two (at most ``log2(batch_size) - 2`` compiled shapes). It changes
        speed and memory, not the results. ``"auto"``: the largest size that
        fits in device memory. The first batch is tried with
        ``max_batch_size`` examples (fewer when the data has fewer); when a
        batch fails with XLA's out-of-memory error (``RESOURCE_EXHAUSTED``)
        the size is halved and the same examples are evaluated again (none
        lost, none counted twice), on any batch. ``result.batch_size`` is the
        size the run ended with. With a sharding the size stays a multiple of
        the device count. Refused with several processes.
      max_batch_size: the first size ``batch_size="auto"`` tries.
      prefetch: batches read ahead by a background thread while the current
        one is attacked: taken from ``x``, checked, cut to ``batch_size`` and
        put on the devices (a bounded queue; ``0``: none, all in the calling
        thread). The results do not depend on it. An exception of the
        iterator is raised here when its turn comes, with its traceback; the
        thread ends before ``evaluate`` returns or raises (after a read of the
        iterator already under way).
      bounds: ``(lo, hi)`` valid input range.
      progress: show a progress bar (tqdm) on the terminal.
      checkpoint: JSON file written atomically after every batch with the
        partial result and the run's fingerprint (see
        :mod:`jaxadv.evaluation.checkpoint`), so that an interrupted run is not
        lost. An existing file is refused (a ``ValueError`` before anything
        runs) unless ``resume`` or ``overwrite`` says what to do with it. Nothing
        is written before the first batch ends: when all the examples of an
        array fit in one batch, a ``UserWarning`` says that the file protects
        nothing (pass a smaller ``batch_size``). This is evaluate's progress
        file, unrelated to the model's weights.
      resume: continue from ``checkpoint`` when it exists: its examples are
        skipped (their inputs and labels are still read and hashed). The file
        must belong to this run (same eps, norm, suite, key, bounds, model and
        first examples; any batch size may continue it, and
        ``batch_size="auto"`` continues with the checkpoint's size) and be
        intact, else a
        :class:`~jaxadv.evaluation.CheckpointError` names the problem and the
        file is left as it is. A complete checkpoint is returned as it is,
        warnings and checks included, without running anything. The result's
        ``wall_seconds`` then adds the sessions' times (``result.sessions``).
      overwrite: replace an existing ``checkpoint`` file, starting from the
        first example (without ``resume``, or with ``resume`` when the file
        does not exist).
      store_adversarial: keep the adversarial examples in ``result.x_adv``.
      checks: run the gradient-masking checks of
        :func:`jaxadv.evaluation.masking_checks` on the first ``check_size``
        examples and attach their warnings. A check that does not apply is
        skipped with a warning; a check that fails is reported as a warning and
        never costs the evaluated results.
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
        examples of process 0, then process 1, and so on; with array inputs an
        example's key is that of its index in this gathered result (the same
        as a single-process run on the concatenated data), with iterators it
        also folds in the process index. ``checkpoint`` and
        ``batch_size="auto"`` are then refused, and the masking checks run on
        each process's first examples.
      certify: also certify the same examples, from
        :func:`jaxadv.evaluation.smoothing` or
        :func:`jaxadv.evaluation.bound_propagation`: ``result.certified`` holds the
        certified accuracy (a lower bound) at each radius, beside the robust
        accuracy (an upper bound); the numbers of
        ``certified_accuracy(logits_fn, x, y, certify=certify, key=key, bounds=bounds)``
        on the same examples. Refused with ``checkpoint`` and with several processes.
      randomized: the model is randomised, ``logits_fn(x, key) -> logits`` (dropout
        left on, a random input transformation, noise): the attacks get the
        model itself and draw their own keys (use ``suite="rand"``, whose members
        average the gradient over 20 draws; a suite with a member that cannot
        attack a randomised model is refused), while every prediction of an
        example (clean, and of each attack's candidates) uses one draw of the
        model, keyed by the example. The model is called one example at a time
        (``logits_fn(x[i:i+1], key_i)`` under ``jax.vmap``), so that each
        example's draws come from its own key. The figure is then that draw's
        robust accuracy, as AutoAttack's ``"rand"`` version reports it;
        evaluate with several keys to see its spread. The masking checks see
        one fixed draw per example. Refused with ``certify``.
      diagnose: also compute, per example, the indicators of attack failure of
        :func:`jaxadv.evaluation.indicators` (each batch's examples, whether the
        suite fooled them, and their keys): ``result.indicators`` holds them,
        ``result.untrusted()`` the examples any of them flags, and the summary and
        the JSON report count them with the fix each one names. Costs two
        diagnostic attacks of 20 steps and 7 forward passes per batch. With
        ``checkpoint``, a resumed run must diagnose as the interrupted one did.
      adaptive: diagnose, then attack each example counted robust on which an
        indicator fired again, with the fix its indicator names
        (:mod:`jaxadv.evaluation.adaptive`: more steps, EOT, BPDA through
        ``surrogate_fn``, a black-box attack). ``result.robust_accuracy`` stays the
        suite's figure; ``result.adaptive`` says what each fix ran on and fooled,
        and ``result.adaptive_robust_accuracy`` is the figure after them. Refused
        with ``checkpoint`` and with several processes.
      surrogate_fn: with ``adaptive``, a differentiable stand-in of the model for
        the BPDA fix (the model with :func:`jaxadv.bpda` around its
        non-differentiable layers): attacks run on it, success is judged on
        ``logits_fn``.

    Returns:
      An :class:`EvaluationResult`; ``result.robust_accuracy`` is the figure,
      ``result.batch_size`` the size used and ``result.examples_per_second``
      the throughput of the whole run.

    Raises:
      ValueError: a bad argument, input or label (the message names it and the fix).
      CheckpointError: with ``resume``, a damaged checkpoint or one from another run.
      RuntimeError: an attack returned examples outside the threat model.
      jax.errors.JaxRuntimeError: out of device memory with an int
        ``batch_size``, or with ``"auto"`` even for a batch of one example per
        device (a note says what to do).
    """
    norm = check_norm(norm)  # the canonical name of an alias such as "Linf"
    if not eps >= 0:  # NaN fails the comparison too
        raise ValueError(f"eps must be >= 0, got {eps}")
    if checkpoint is not None and Path(checkpoint).exists() and not (resume or overwrite):
        raise ValueError(
            f"checkpoint {checkpoint} exists (the progress file of an earlier run?): pass resume=True to "
            "continue that run, or overwrite=True to replace the file and start from the first example"
        )
    _check_batch_size(batch_size, max_batch_size)
    if isinstance(prefetch, bool) or not isinstance(prefetch, (int, np.integer)) or prefetch < 0:
        raise ValueError(f"prefetch must be an int >= 0 (batches read ahead), got {prefetch!r}")
    auto = batch_size == "auto"
    attacks = resolve_suite(suite, norm=norm)
    check_suite_norm(suite, attacks, norm)
    if randomized:
        cannot = [a.name for a in attacks if not a.randomized]
        if cannot:
            raise ValueError(
                f"randomized=True: {', '.join(cannot)} cannot attack a randomised model "
                "logits_fn(x, key); use suite='rand' or members built with SuiteAttack(randomized=True)"
            )
        if certify is not None:
            raise ValueError("certify cannot be combined with randomized=True")
    for flag, value in (("diagnose", diagnose), ("adaptive", adaptive)):
        if not isinstance(value, bool):
            raise ValueError(f"{flag} must be True or False, got {value!r}")
    if surrogate_fn is not None and not adaptive:
        raise ValueError("surrogate_fn is used by the adaptive re-attack only: pass adaptive=True")
    if surrogate_fn is not None and not callable(surrogate_fn):
        raise ValueError(f"surrogate_fn must be a model logits_fn(x) -> logits, got {surrogate_fn!r}")
    diagnose = diagnose or adaptive
    names = [a.name for a in attacks]
    key_attacks, key_checks = _split_key(key)
    layout = _Layout(shd.resolve_batch_sharding(sharding))
    # An example's index: its position in the data (with several processes, in the
    # gathered result: process p's example i is p * n + i, n the examples per process).
    key_examples, index_offset = key_attacks, 0
    if layout.processes > 1 and auto:
        raise ValueError(
            "batch_size='auto' is not supported when several processes evaluate together "
            "(an out-of-memory error on one process would leave the others waiting): pass an int"
        )
    # Arrays are checked in slices of the size tried first (or given).
    first_size = int(max_batch_size if auto else cast(int, batch_size))
    source, total = _source(x, y, first_size)
    if total == 0:
        raise ValueError("x holds no examples: a robust accuracy of zero examples is undefined")
    if layout.processes > 1:
        if checkpoint is not None:
            raise ValueError("checkpoint is not supported when several processes evaluate together")
        if total is not None and layout.agree(-total) != -layout.agree(total):
            raise ValueError("every process must pass the same number of examples")
        if total is not None:
            index_offset = jax.process_index() * total
        else:  # an iterator's length is not known in advance: the process index is folded in
            key_examples = jax.random.fold_in(jax.random.fold_in(key_attacks, _PROCESS), jax.process_index())
    if adaptive and (checkpoint is not None or layout.processes > 1):
        raise ValueError("adaptive cannot be combined with checkpoint or with several processes")
    flagged: list[tuple[np.ndarray, Any, Any, np.ndarray]] = []  # with adaptive: (indices, x, y, flags)
    certifier = None
    if certify is not None:
        if checkpoint is not None or layout.processes > 1:
            raise ValueError("certify cannot be combined with checkpoint or with several processes")
        certifier = CertifiedStream(logits_fn, certify, key=key, bounds=bounds)
    # Parameters copied to every device once, not at every call of a sharded program.
    attacked_fn = logits_fn
    if layout.sharding is not None:
        attacked_fn = shd.replicate(logits_fn, cast(Mesh, layout.sharding.mesh))
    lo, hi = np.asarray(bounds[0], np.float32), np.asarray(bounds[1], np.float32)

    path = Path(checkpoint) if checkpoint is not None else None
    fingerprint = None
    saved: SavedRun | None = None
    if path is not None:
        fingerprint = run_fingerprint(
            eps=eps,
            norm=norm,
            attacks=names,
            key=key,
            bounds=(lo, hi),
            logits_fn=logits_fn,
            batch_size=None if auto else int(cast(int, batch_size)),
        )
        if resume and path.exists():
            saved = _resume(path, fingerprint)
            if store_adversarial:
                raise ValueError("store_adversarial cannot be combined with resume")
    if not auto:
        size = _Size(int(cast(int, batch_size)))
    elif saved is not None:  # the size the checkpoint's batches were cut with
        size = _Size(cast(int, saved.fingerprint.batch_size))
    else:
        size = _Size(_first_size(max_batch_size, total, layout.multiple))
    if path is not None and saved is None and total is not None and total <= size.value:
        warnings.warn(
            f"checkpoint={str(path)!r} is written after each batch, but all {total} examples fit in one "
            f"batch of {size.value}: nothing is saved before the run ends; pass a smaller batch_size to "
            "keep partial progress",
            UserWarning,
            stacklevel=2,
        )
    setting = _Setting(attacked_fn, attacks, float(eps), norm, lo, hi, size.value, layout, randomized)
    skip = 0 if saved is None else saved.examples
    if saved is not None and skip and (saved.result.indicators is not None) != diagnose:
        raise ValueError(
            f"the checkpoint {str(path)!r} was written with diagnose={not diagnose}: resume with "
            f"diagnose={not diagnose}, or start again with overwrite=True"
        )
    tally = _Tally(names, None if saved is None else saved.result, store_adversarial, diagnose)
    hasher = DataHasher()  # the examples done so far, as the checkpoint records them
    first = _FirstExamples(check_size)  # for the masking checks, resumed or not
    batch_index = 0 if saved is None else saved.batches
    wall_before = 0.0 if saved is None else saved.result.wall_seconds
    start = time.perf_counter()

    def wall() -> float:
        return wall_before + time.perf_counter() - start

    pieces = _pieces(source, skip, size, layout.placer() if prefetch else None)
    reader = _ReadAhead(pieces, prefetch) if prefetch else None
    feed = _Cutter(reader if reader is not None else pieces)
    bar = None
    try:
        if progress and jax.process_index() == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=skip, unit="ex", desc=f"evaluate {norm} eps={eps:g}")
        if saved is not None:
            while hasher.count < skip:  # read and hashed, not attacked
                piece = feed.take(min(skip - hasher.count, size.value))
                if piece is None:
                    break
                first.offer(hasher.count, piece)
                hasher.update(piece.x, piece.y)
            more = feed.take(size.value)
            if more is not None:
                feed.give_back(more)
            check_data(saved, hasher, more=more is not None)  # refuses another dataset
            if saved.complete:
                return saved.result
        while (piece := feed.take(size.value)) is not None:
            first.offer(hasher.count, piece)
            # Each example's key comes from its index in the data, never from its batch.
            keys = example_keys(key_examples, index_offset + hasher.count + np.arange(len(piece.x)))
            try:
                out = _evaluate_batch(
                    setting._replace(batch_size=size.value), piece.x, piece.y, keys, piece.placed
                )
            except jax.errors.JaxRuntimeError as e:
                if not _out_of_memory(e):
                    raise
                smaller = _halved(size.value, layout.multiple)
                if not auto or smaller >= size.value:
                    e.add_note(
                        f"jaxadv.evaluate: a batch of {len(piece.x)} examples does not fit in device memory; "
                        + (
                            "pass a smaller batch_size, or batch_size='auto' to find one that fits"
                            if not auto
                            else "even the smallest batch (one example per device) does not fit"
                        )
                    )
                    raise
                feed.give_back(piece._replace(placed=None))  # its device copy is freed
                size.value = smaller
                continue
            tally.add(out)
            if diagnose:
                flags = _diagnose_batch(
                    logits_fn, piece.x, piece.y, out.fooled_by >= 0, keys, eps=float(eps), norm=norm,
                    bounds=bounds, randomized=randomized,
                )  # fmt: skip
                tally.flags.append(flags)
                rows = np.nonzero(flags.any(axis=1) & (out.fooled_by == ROBUST))[0]
                if adaptive and rows.size:
                    x_rows, y_rows = np.asarray(piece.x)[rows], np.asarray(piece.y)[rows]
                    flagged.append((hasher.count + rows, x_rows, y_rows, flags[rows]))
            if certifier is not None:
                certifier.add(piece.x, piece.y)
            hasher.update(piece.x, piece.y)
            batch_index += 1
            if path is not None and fingerprint is not None:
                write_checkpoint(
                    path,
                    tally.result(eps, norm, size.value, wall()),
                    fingerprint=fingerprint._replace(batch_size=size.value),
                    data=hasher,
                    complete=False,
                    batches=batch_index,
                )
            if bar is not None:
                bar.update(len(piece.x))
    finally:
        if reader is not None:
            reader.close()
        if bar is not None:
            bar.close()

    if layout.agree(hasher.count) == 0:  # an iterable that yielded no examples (on every process)
        raise ValueError("x yielded no examples: a robust accuracy of zero examples is undefined")
    result = tally.result(eps, norm, size.value, wall(), layout)
    result.warnings.extend(_non_finite_warnings(result))
    if certifier is not None:
        result.certified = certifier.result()
    if adaptive:
        result.adaptive = _reattack(
            result, flagged, logits_fn, eps=float(eps), norm=norm, bounds=bounds, key=key_checks,
            batch_size=size.value, randomized=randomized, surrogate_fn=surrogate_fn,
        )  # fmt: skip
    check_batch = first.batch()
    if checks and check_batch is not None:
        checked = fix_key(logits_fn, key_checks) if randomized else logits_fn
        _attach_checks(result, checked, check_batch, attacks, key_checks, bounds)
    if path is not None and fingerprint is not None:
        write_checkpoint(
            path,
            result,
            fingerprint=fingerprint._replace(batch_size=size.value),
            data=hasher,
            complete=True,
            batches=batch_index,
        )
    return result


def _attach_checks(
    result: EvaluationResult,
    logits_fn: LogitsFn,
    batch: tuple[np.ndarray, np.ndarray],
    attacks: list[SuiteAttack],
    key: PRNGKey,
    bounds: Bounds,
) -> None:
    """Add the masking checks' warnings and figures to ``result``; a check that fails
    becomes a warning, so the evaluated examples are never lost to it."""
    try:
        report = masking_checks(
            logits_fn,
            batch[0],
            batch[1],
            eps=result.eps,
            norm=cast(Norm, result.norm),
            key=key,
            bounds=bounds,
            suite_result=result,
            black_box=[a.black_box for a in attacks],
        )
    except Exception as e:  # noqa: BLE001 - any failure here must not cost the evaluated results
        result.checks["checks_error"] = f"{type(e).__name__}: {e}"
        result.warnings.append(
            f"the gradient-masking checks failed ({type(e).__name__}: {e}); the robust accuracy "
            "above stands, but was not checked for masking"
        )
        return
    result.warnings.extend(report.warnings)
    result.checks.update(report.figures)
