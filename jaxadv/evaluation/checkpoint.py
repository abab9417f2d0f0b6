r"""Checkpoints of :func:`jaxadv.evaluate`: the run fingerprint, the file, its checks and the resume rules.

A checkpoint is the JSON of a partial :class:`EvaluationResult` (its examples
are the first ``n`` of the data, in order) plus a ``"checkpoint"`` section:

* ``fingerprint``: what makes two runs the same run (:class:`Fingerprint`):
  eps, norm, suite, key, bounds and model; it also records the batch size the
  run used, which a resume may change (results do not depend on it);
* ``data``: the number of examples done, the number of batches they took and a
  SHA-256 over them (:class:`DataHasher`; inputs and labels, independent of
  the batching);
* ``complete``: whether the run finished (masking checks included).

Resuming (:func:`read_checkpoint`, :func:`check_same_run`, :func:`check_data`)
refuses, with a :class:`CheckpointError` naming the file and the problem, a
file that is damaged (not JSON, missing or mistyped fields, arrays of
different lengths, unknown outcome codes), that belongs to another run (any
fingerprint field but the batch size differs; a run with ``batch_size="auto"``
takes the checkpoint's batch size) or to other data (the first
``n`` examples hash differently, or there are fewer than ``n``). A refused
file is never merged nor overwritten. Every write goes through :func:`write_json_atomic`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxadv.evaluation.adaptive import AdaptiveReport
from jaxadv.evaluation.files import CheckpointError, read_json, write_json_atomic
from jaxadv.evaluation.result import MISCLASSIFIED, EvaluationResult
from jaxadv.typing import LogitsFn, PRNGKey

__all__ = [
    "CheckpointError",
    "DataHasher",
    "Fingerprint",
    "SavedRun",
    "check_data",
    "check_same_run",
    "model_fingerprint",
    "read_checkpoint",
    "run_fingerprint",
    "write_checkpoint",
    "write_json_atomic",
]

FORMAT = "jaxadv.evaluate checkpoint"
# 2: the batch size in the fingerprint, the batch count in the data.
# 3: each example's randomness from its index in the data, no longer from its batch's:
#    a version-2 file holds results that a version-3 run cannot continue.
VERSION = 3


def _array_digest(a: Any) -> str:
    a = np.ascontiguousarray(np.asarray(a))
    h = hashlib.sha256(f"{a.dtype.name}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _key_data(key: PRNGKey) -> np.ndarray:
    if jax.dtypes.issubdtype(getattr(key, "dtype", None), jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(key))
    return np.asarray(key)


def model_fingerprint(logits_fn: LogitsFn) -> str:
    """SHA-256 over the arrays of a model: what a checkpoint can tell apart.

    Covered: every array leaf of ``jax.tree_util.tree_leaves(logits_fn)`` (dtype,
    shape and bytes, in order): the parameters and ``mean``/``std`` of the
    library's adapters (:func:`jaxadv.from_flax`, :func:`jaxadv.from_apply`,
    :func:`jaxadv.from_nnx`, which are :class:`jax.tree_util.Partial`), and, for a
    plain function, the arrays held in its closure (``lambda x: x @ w`` with ``w``
    a local variable of the enclosing function).

    Not covered: the code of the function, global variables it reads, and values
    that are not arrays. Two models that differ only there share a fingerprint.
    """
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(logits_fn):
        for a in _arrays_of(leaf):
            h.update(_array_digest(a).encode())
    return h.hexdigest()


def _arrays_of(leaf: Any) -> list[Any]:
    if isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
        return [jax.device_get(leaf)]
    out: list[Any] = []
    for cell in getattr(leaf, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if value is leaf:
            continue
        out.extend(
            jax.device_get(a)
            for a in jax.tree_util.tree_leaves(value)
            if isinstance(a, (jax.Array, np.ndarray, np.generic))
        )
    return out


class Fingerprint(NamedTuple):
    """What makes two evaluations the same run (stored in every checkpoint).

    Attributes:
      eps: the radius. norm: the canonical norm name. attacks: the suite's names.
      key: hex of the key's data (``jax.random.key_data``).
      bounds: SHA-256 of ``lo`` and ``hi`` as float32 arrays.
      model: :func:`model_fingerprint` of ``logits_fn``.
      batch_size: examples per batch the run used. Not compared on resume:
        every example draws its randomness from its own index in the data, so
        the results do not depend on the batch size. ``None`` in the
        fingerprint of a ``batch_size="auto"`` run before it starts: it then
        takes the checkpoint's size.
    """

    eps: float
    norm: str
    attacks: list[str]
    key: str
    bounds: str
    model: str
    batch_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {name: (list(v) if isinstance(v, list) else v) for name, v in self._asdict().items()}


_FIELD_NAMES = {
    "eps": "eps",
    "norm": "norm",
    "attacks": "suite",
    "key": "key",
    "bounds": "bounds",
    "model": "model (its parameters)",
    "batch_size": "batch size",
}


def run_fingerprint(
    *,
    eps: float,
    norm: str,
    attacks: list[str],
    key: PRNGKey,
    bounds: tuple[Any, Any],
    logits_fn: LogitsFn,
    batch_size: int | None = None,
) -> Fingerprint:
    """The :class:`Fingerprint` of an evaluation with these arguments (``batch_size=None``: "auto")."""
    lo = np.asarray(bounds[0], np.float32)
    hi = np.asarray(bounds[1], np.float32)
    return Fingerprint(
        eps=float(eps),
        norm=str(norm),
        attacks=list(attacks),
        key=_key_data(key).astype(np.uint32).tobytes().hex(),
        bounds=hashlib.sha256((_array_digest(lo) + _array_digest(hi)).encode()).hexdigest(),
        model=model_fingerprint(logits_fn),
        batch_size=batch_size,
    )


class DataHasher:
    """A running SHA-256 over the examples seen so far, whatever their batching.

    Inputs and labels are hashed as two byte streams (inputs in their own dtype,
    labels as little-endian int64), so ``update`` on batches of any size gives
    the same digest for the same examples in the same order; the per-example
    shape and dtype of the inputs are part of the digest.
    """

    def __init__(self) -> None:
        self._x = hashlib.sha256()
        self._y = hashlib.sha256()
        self._spec = ""
        self.count = 0

    def update(self, x: np.ndarray, y: np.ndarray) -> None:
        """Add a batch: ``x`` ``[b, ...]``, ``y`` ``[b]`` integer labels."""
        x = np.ascontiguousarray(x)
        spec = f"{x.dtype.name}{x.shape[1:]}"
        if self._spec and spec != self._spec:
            self._x.update(spec.encode())  # a change of shape mid-stream is part of the data
        self._spec = self._spec or spec
        self._x.update(x.tobytes())
        self._y.update(np.ascontiguousarray(y, "<i8").tobytes())
        self.count += int(x.shape[0])

    def hexdigest(self) -> str:
        return hashlib.sha256(self._spec.encode() + self._x.digest() + self._y.digest()).hexdigest()


class SavedRun(NamedTuple):
    """A checkpoint read back and checked for consistency.

    Attributes:
      path: the file.
      result: its examples as an :class:`EvaluationResult` (warnings and checks included).
      fingerprint: the run it belongs to.
      examples: how many examples it holds. data: their :class:`DataHasher` digest.
      complete: the run finished, masking checks included.
      batches: how many batches its examples took (the index of the next batch).
    """

    path: Path
    result: EvaluationResult
    fingerprint: Fingerprint
    examples: int
    data: str
    complete: bool
    batches: int = 0


def write_checkpoint(
    path: str | os.PathLike[str],
    result: EvaluationResult,
    *,
    fingerprint: Fingerprint,
    data: DataHasher,
    complete: bool,
    batches: int = 0,
) -> None:
    """Write ``result`` (the first ``data.count`` examples of the run, in ``batches``
    batches) as a checkpoint, atomically."""
    if data.count != result.num_examples:
        raise ValueError(f"the data hash covers {data.count} examples, the result {result.num_examples}")
    if fingerprint.batch_size is None:
        raise ValueError("the fingerprint of a checkpoint needs the batch size the run used")
    section = {
        "format": FORMAT,
        "version": VERSION,
        "fingerprint": fingerprint.to_dict(),
        "data": {"examples": data.count, "sha256": data.hexdigest(), "batches": batches},
    }
    write_json_atomic(path, {**result.to_dict(), "complete": complete, "checkpoint": section})


def _fail(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} cannot be resumed: {problem}. The file was left unchanged; "
        "pass resume=False or another checkpoint path to start a new run"
    )


def _field(data: dict[str, Any], name: str, kind: type | tuple[type, ...], path: Path) -> Any:
    if name not in data:
        raise _fail(path, f"field {name!r} is missing")
    value = data[name]
    # bool is an int in Python; a flag in place of a number is damage too.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float, (int, float))):
        raise _fail(path, f"field {name!r} has the wrong type ({type(value).__name__})")
    return value


def _numbers(values: list[Any], name: str, integer: bool, path: Path) -> np.ndarray:
    ok = all(
        isinstance(v, int) and not isinstance(v, bool)
        if integer
        else isinstance(v, (int, float)) and not isinstance(v, bool)
        for v in values
    )
    if not ok:
        raise _fail(path, f"field {name!r} must hold only {'integers' if integer else 'numbers'}")
    return np.asarray(values, np.int64 if integer else np.float64).reshape(len(values))


def read_checkpoint(path: str | os.PathLike[str]) -> SavedRun:
    """Read a checkpoint and check that it is whole and self-consistent.

    Raises:
      CheckpointError: naming the file and the problem: unreadable, not JSON
        (truncated or garbled), not a checkpoint of :func:`jaxadv.evaluate`
        (or one without a run fingerprint, from an older version), a missing or
        mistyped field, per-example arrays of different lengths or not matching
        the example count, an outcome code outside ``[-2, len(attacks))``, a
        negative or non-finite perturbation norm or query count.
    """
    path = Path(path)
    data = read_json(path, "checkpoint")
    section = data.get("checkpoint")
    if not isinstance(section, dict) or section.get("format") != FORMAT:
        raise _fail(path, "it is not a checkpoint of jaxadv.evaluate with a run fingerprint")
    if section.get("version") != VERSION:
        raise _fail(
            path,
            f"format version {section.get('version')!r} is not {VERSION} (another jaxadv wrote it)",
        )
    fp = _field(section, "fingerprint", dict, path)
    fingerprint = Fingerprint(
        eps=float(_field(fp, "eps", (int, float), path)),
        norm=_field(fp, "norm", str, path),
        attacks=list(_field(fp, "attacks", list, path)),
        key=_field(fp, "key", str, path),
        bounds=_field(fp, "bounds", str, path),
        model=_field(fp, "model", str, path),
        batch_size=_field(fp, "batch_size", int, path),
    )
    stored = _field(section, "data", dict, path)
    examples = _field(stored, "examples", int, path)
    batches = _field(stored, "batches", int, path)
    if fingerprint.batch_size is None or fingerprint.batch_size < 1 or batches < 0:
        raise _fail(path, "its batch size must be >= 1 and its batch count >= 0")
    digest = _field(stored, "sha256", str, path)
    complete = _field(data, "complete", bool, path)

    eps = float(_field(data, "eps", (int, float), path))
    norm = _field(data, "norm", str, path)
    attacks = _field(data, "attacks", list, path)
    if not all(isinstance(a, str) for a in attacks):
        raise _fail(path, "field 'attacks' must hold attack names")
    if (eps, norm, attacks) != (fingerprint.eps, fingerprint.norm, fingerprint.attacks):
        raise _fail(path, "its eps, norm or attacks disagree with its own fingerprint")
    fooled_by = _numbers(_field(data, "fooled_by", list, path), "fooled_by", True, path)
    norms = _numbers(_field(data, "perturbation_norm", list, path), "perturbation_norm", False, path)
    queries = _numbers(_field(data, "queries", list, path), "queries", True, path)
    num = _field(data, "num_examples", int, path)
    lengths = {"fooled_by": fooled_by.size, "perturbation_norm": norms.size, "queries": queries.size}
    if any(n != examples for n in lengths.values()) or num != examples:
        raise _fail(
            path,
            f"inconsistent lengths: {examples} examples hashed, num_examples={num}, "
            + ", ".join(f"{k} has {v}" for k, v in lengths.items()),
        )
    bad = (fooled_by < MISCLASSIFIED) | (fooled_by >= len(attacks))
    if np.any(bad):
        raise _fail(
            path,
            f"unknown outcome code {int(fooled_by[bad][0])} in fooled_by (valid: {MISCLASSIFIED} to "
            f"{len(attacks) - 1})",
        )
    if not np.all(np.isfinite(norms)) or np.any(norms < 0):
        raise _fail(path, "perturbation_norm holds negative or non-finite values")
    if np.any(queries < 0):
        raise _fail(path, "queries holds negative values")
    warnings = _field(data, "warnings", list, path)
    if not all(isinstance(w, str) for w in warnings):
        raise _fail(path, "field 'warnings' must hold strings")
    checks = _field(data, "checks", dict, path)
    non_finite = _field(data, "non_finite", dict, path)
    seconds = _field(data, "seconds", dict, path)
    for name, table in (("non_finite", non_finite), ("seconds", seconds)):
        if set(table) != set(attacks) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in table.values()
        ):
            raise _fail(path, f"field {name!r} must map every attack to a non-negative number")
    non_finite_clean = _field(data, "non_finite_clean", int, path)
    wall = float(_field(data, "wall_seconds", (int, float), path))
    if not (np.isfinite(wall) and wall >= 0):
        raise _fail(path, "field 'wall_seconds' must be a non-negative number")
    sessions = data.get("sessions", 1)
    if isinstance(sessions, bool) or not isinstance(sessions, int) or sessions < 1:
        raise _fail(path, "field 'sessions' must be an integer >= 1")
    indicators = data.get("indicators")
    if indicators is not None:
        if not isinstance(indicators, dict) or not all(
            isinstance(v, list) and len(v) == examples and all(isinstance(b, bool) for b in v)
            for v in indicators.values()
        ):
            raise _fail(path, f"field 'indicators' must map names to lists of {examples} booleans")
        indicators = {str(k): np.asarray(v, bool).reshape(examples) for k, v in indicators.items()}
    adaptive = data.get("adaptive")
    if adaptive is not None:
        try:
            adaptive = AdaptiveReport.from_dict(adaptive)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise _fail(path, f"field 'adaptive' is not an adaptive re-attack's report ({e})") from e
        if adaptive.fooled.shape != (examples,):
            raise _fail(path, f"field 'adaptive' must flag {examples} examples")
    result = EvaluationResult(
        eps=eps,
        norm=norm,
        attacks=list(attacks),
        fooled_by=fooled_by.astype(np.int32),
        perturbation_norm=norms.astype(np.float32),
        queries=queries,
        warnings=list(warnings),
        checks=dict(checks),
        non_finite={k: int(v) for k, v in non_finite.items()},
        non_finite_clean=non_finite_clean,
        seconds={k: float(v) for k, v in seconds.items()},
        batch_size=fingerprint.batch_size,
        wall_seconds=wall,
        sessions=sessions,
        indicators=indicators,
        adaptive=adaptive,
    )
    return SavedRun(path, result, fingerprint, examples, digest, complete, batches)


def _short(value: Any) -> str:
    text = str(value)
    return text[:12] + "..." if len(text) > 16 else text


def check_same_run(saved: SavedRun, fingerprint: Fingerprint) -> None:
    """Refuse ``saved`` unless it was written by a run with this fingerprint.

    The batch size is not compared: a run may continue a checkpoint with any
    batch size and get the results of an uninterrupted run (each example's
    randomness comes from its index in the data).

    Raises:
      CheckpointError: naming the first field that differs (eps, norm, suite,
        key, bounds or model) with both values.
    """
    for name in Fingerprint._fields:
        if name == "batch_size":
            continue
        mine, theirs = getattr(fingerprint, name), getattr(saved.fingerprint, name)
        if mine != theirs:
            raise CheckpointError(
                f"checkpoint {saved.path} was written for another {_FIELD_NAMES[name]} "
                f"(checkpoint: {_short(theirs)}; this run: {_short(mine)}). The file was left unchanged; "
                "pass resume=False or another checkpoint path to start a new run"
            )


def check_data(saved: SavedRun, data: DataHasher, *, more: bool = False) -> None:
    """Refuse ``saved`` unless its examples are the first ones of this run's data.

    ``data`` has hashed this run's first examples, up to ``saved.examples`` of them
    (fewer when the data ran out first); ``more``: the data goes on after them.

    Raises:
      CheckpointError: the data has fewer examples than the checkpoint, its first
        examples hash differently, or the checkpoint is complete and the data
        goes on.
    """
    if data.count < saved.examples:
        raise CheckpointError(
            f"checkpoint {saved.path} holds {saved.examples} examples but the data has only {data.count}: "
            "it was written for another dataset. The file was left unchanged"
        )
    if data.count != saved.examples or data.hexdigest() != saved.data:
        raise CheckpointError(
            f"checkpoint {saved.path} was written for another dataset (the first {saved.examples} examples "
            "differ in inputs or labels). The file was left unchanged; pass resume=False or another "
            "checkpoint path to start a new run"
        )
    if saved.complete and more:
        raise CheckpointError(
            f"checkpoint {saved.path} is complete with {saved.examples} examples but the data has more: "
            "it was written for another dataset. The file was left unchanged"
        )
