"""Feeding an evaluation: the inputs checked and cut into batches of any size, read
ahead on a thread, and the first examples kept for the masking checks."""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_Batch = tuple[np.ndarray, np.ndarray]


def _check_inputs(x: np.ndarray, where: str) -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"x must be floating point, got dtype {x.dtype} ({where}): scale it to the range of bounds, "
            "e.g. x.astype(np.float32) / 255 with bounds=(0, 1), and give eps in that scale (8/255, not 8)"
        )
    if x.ndim < 1:
        raise ValueError(f"x must have a leading example axis, got shape {x.shape}")
    # The row size spelled out: a reshape to (0, -1) is ambiguous for zero rows.
    row = int(np.prod(x.shape[1:], dtype=np.int64))
    finite = np.isfinite(x.astype(np.float32, copy=False).reshape(x.shape[0], row)).all(axis=1)
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
