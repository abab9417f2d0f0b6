r"""Models that are not JAX: any Python callable as a black-box ``logits_fn``.

:func:`from_callable` wraps a function ``fn(x: np.ndarray) -> np.ndarray`` (a
scikit-learn ``predict_proba``, a PyTorch module behind ``torch.no_grad``, a
client of an HTTP endpoint...) into a model that every attack of the library
accepts. Inside compiled code the call goes through :func:`jax.pure_callback`:
the whole batch is handed to ``fn`` in one call (or in chunks of
``batch_size`` rows), also under ``vmap`` (``vmap_method="broadcast_all"``:
the vmapped axes are folded into the batch).

Such a model has no gradient. Differentiating it raises
:class:`GradientNotAvailableError` when the program is traced, so a gradient
attack fails loudly, and a black-box attack that ran to completion provably
never took one.

Errors raised by ``fn`` inside the compiled loop: the black-box attacks of the
library re-raise them as :class:`CallableError` (with the original exception
as ``__cause__``) and return nothing, so no half-attacked batch is ever
returned. Elsewhere (a user's own ``jit``) they surface as JAX's runtime error,
whose message contains the original traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
from typing import Any, Callable, Iterator, Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv.typing import Array, LogitsFn

__all__ = ["CallableError", "GradientNotAvailableError", "from_callable"]


class GradientNotAvailableError(TypeError):
    """Raised when a gradient of a black-box model (see :func:`from_callable`) is requested."""


class CallableError(RuntimeError):
    """A model built by :func:`from_callable` raised, or returned a malformed output.

    The original exception is chained as ``__cause__``.
    """


_errors_lock = threading.Lock()
_errors: list[BaseException] = []


def _record(err: BaseException) -> None:
    with _errors_lock:
        _errors.append(err)
        del _errors[:-8]


@contextlib.contextmanager
def reraise_callable_errors() -> Iterator[None]:
    """Turn a failure of a :func:`from_callable` model inside compiled code into
    :class:`CallableError` (used by the black-box attacks around their loops)."""
    with _errors_lock:
        _errors.clear()
    try:
        yield
    except CallableError:
        raise
    except Exception:
        with _errors_lock:
            cause = _errors[-1] if _errors else None
            _errors.clear()
        if cause is None:
            raise
        if isinstance(cause, CallableError):
            raise CallableError(str(cause)) from cause.__cause__
        raise CallableError(
            f"the model's callable raised {type(cause).__name__}: {cause} (nothing was returned)"
        ) from cause


@dataclasses.dataclass(frozen=True, eq=False)
class _ById:
    """Holder that hashes an unhashable callable by identity."""

    fn: Callable[[np.ndarray], Any]

    def __call__(self, x: np.ndarray) -> Any:
        return self.fn(x)


@dataclasses.dataclass(frozen=True)
class HostModel:
    """A Python callable seen as ``logits_fn`` (built by :func:`from_callable`).

    Hashable and free of arrays: the attacks treat it as static structure.
    """

    fn: Callable[[np.ndarray], Any]
    num_classes: int
    returns: str
    batch_size: int | None
    input_dtype: Any

    def _host(self, x: np.ndarray, feature_ndim: int) -> np.ndarray:
        try:
            x = np.asarray(x, dtype=self.input_dtype)
            lead = x.shape[: x.ndim - feature_ndim - 1]
            flat = x.reshape((-1,) + x.shape[x.ndim - feature_ndim :])
            n = flat.shape[0]
            size = n if self.batch_size is None else self.batch_size
            chunks = [self._call(flat[s : s + size]) for s in range(0, max(n, 1), max(size, 1))]
            out = np.concatenate(chunks, axis=0)
            return out.reshape(lead + (-1, self.num_classes))
        except BaseException as e:  # noqa: B036 - recorded, then re-raised for XLA
            _record(e)
            raise

    def _call(self, xb: np.ndarray) -> np.ndarray:
        out = np.asarray(self.fn(xb))
        n = xb.shape[0]
        if self.returns == "labels":
            labels = out.reshape(-1)
            if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
                raise CallableError(
                    f"fn must return {n} integer labels for a batch of {n} (returns='labels'), "
                    f"got dtype {out.dtype} and shape {out.shape}"
                )
            if np.any((labels < 0) | (labels >= self.num_classes)):
                raise CallableError(f"fn returned labels outside [0, {self.num_classes})")
            return np.eye(self.num_classes, dtype=np.float32)[labels]
        if out.shape != (n, self.num_classes):
            raise CallableError(
                f"fn must return scores of shape [batch, num_classes]=({n}, {self.num_classes}), "
                f"got {out.shape}"
            )
        return out.astype(np.float32)

    def __call__(self, x: Array) -> Array:
        return _host_logits(self, jnp.asarray(x))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _host_logits(model: HostModel, x: Array) -> Array:
    feature_ndim = x.ndim - 1
    shape = jax.ShapeDtypeStruct((x.shape[0], model.num_classes), jnp.float32)
    return jax.pure_callback(lambda a: model._host(a, feature_ndim), shape, x, vmap_method="broadcast_all")


@_host_logits.defjvp
def _no_gradient(model: HostModel, primals: Any, tangents: Any) -> Any:
    del primals, tangents
    raise GradientNotAvailableError(
        f"the model {model.fn!r} is a black box built by jaxadv.from_callable: it has no gradient. "
        "Use a score-based attack (jaxadv.square, spsa, nes), a decision-based one "
        "(jaxadv.hop_skip_jump), or a transfer attack (jaxadv.transfer) from a JAX surrogate."
    )


def from_callable(
    fn: Callable[[np.ndarray], Any],
    *,
    num_classes: int,
    returns: Literal["scores", "labels"] = "scores",
    batch_size: int | None = None,
    input_dtype: Any = np.float32,
) -> LogitsFn:
    r"""Wrap any Python callable as a black-box model the attacks accept.

    ``fn`` receives a NumPy array ``x`` of shape ``[n, ...]`` (the shape of the
    attack's inputs, the batch possibly larger than yours: attacks batch their
    queries) and returns, for ``returns="scores"``, an array ``[n, num_classes]``
    of scores (logits, log-probabilities or probabilities; the score-based
    attacks only compare them, and their margin loss is computed on whatever is
    returned), or, for ``returns="labels"``, ``[n]`` integer labels, which become
    one-hot scores (enough for decision-based attacks such as
    :func:`jaxadv.hop_skip_jump`).

    Examples: ``from_callable(clf.predict_proba, num_classes=10)`` for a
    scikit-learn classifier taking images (reshape inside a small wrapper when it
    expects flat features); ``from_callable(lambda a: net(torch.from_numpy(a)).numpy(),
    num_classes=10)`` for a PyTorch module under ``torch.no_grad``.

    Inside compiled code the call is a :func:`jax.pure_callback` (``fn`` must be
    a pure function of its input). The result is float32. Taking a gradient
    raises :class:`GradientNotAvailableError`; an exception inside ``fn`` during a
    black-box attack becomes :class:`CallableError` (see the module docstring).

    Args:
      fn: ``np.ndarray [n, ...] -> np.ndarray``; compared by equality/hash (a
        module-level function or a bound method reuses compiled programs).
      num_classes: number of classes ``C`` (static).
      returns: ``"scores"`` or ``"labels"``.
      batch_size: when set, ``fn`` is called on chunks of at most this many rows.
      input_dtype: dtype of the array handed to ``fn`` (default float32).

    Returns:
      A hashable ``logits_fn(x [batch, ...]) -> [batch, num_classes]`` float32.
    """
    if not callable(fn):
        raise ValueError(f"fn must be callable, got {type(fn).__name__}")
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if returns not in ("scores", "labels"):
        raise ValueError(f"returns must be 'scores' or 'labels', got {returns!r}")
    if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    try:
        hash(fn)
    except TypeError:
        fn = _ById(fn)
    return HostModel(
        fn, int(num_classes), returns, None if batch_size is None else int(batch_size), np.dtype(input_dtype)
    )
