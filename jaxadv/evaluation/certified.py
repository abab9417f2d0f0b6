r"""Certified accuracy: the fraction of examples provably robust at each radius.

Attacks give an *upper* bound on robust accuracy (an attack that fails proves
nothing); a certificate gives a *lower* bound. For one radius :math:`r`,

.. math:: \text{certified accuracy}(r) \;\le\; \text{true robust accuracy}(r)
          \;\le\; \text{accuracy under any attack}(r).

Two ways to certify, chosen by the :class:`Certification` passed as ``certify``
(made by :func:`smoothing` or :func:`bound_propagation`):

* **Randomized smoothing** (:func:`jaxadv.certify.smooth_certify`): example ``i``
  is certified at L2 radius :math:`r` when the *smoothed* classifier predicts its
  label with certified radius :math:`R_i \ge r`; the statement holds with
  probability at least ``1 - alpha`` per example, over the noise. It is a lower
  bound for the smoothed classifier, not for the model itself.
* **Bound propagation** (:func:`jaxadv.certify.verified`, IBP or CROWN): example
  ``i`` is certified at radius :math:`r` when every logit margin of its label is
  provably positive on :math:`B_r(x_i)\cap[lo, hi]`; deterministic, about the model
  itself. Only the radii listed are checked; a certificate at a radius also holds
  at every smaller one, so the per-example radius is the largest listed radius
  certified.

Examples are certified ``batch_size`` at a time, chunk ``j`` with the key
``fold_in(key, j)`` (a short last chunk is padded to a power of two, so few
shapes compile). The result depends on the examples, their order, ``key`` and the
:class:`Certification`, never on how the data reached the function: this is how
:func:`jaxadv.evaluate` with ``certify=`` stores the same numbers as
:func:`certified_accuracy` on the same examples.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any, Literal

import jax
import numpy as np

from jaxadv.certify import smooth_certify, verified
from jaxadv.typing import ArrayLike, Bounds, LogitsFn, Norm, PRNGKey
from jaxadv.validation import check_norm, check_steps

__all__ = [
    "Certification",
    "CertifiedResult",
    "CertifiedStream",
    "bound_propagation",
    "certified_accuracy",
    "smoothing",
]

#: ``CertifiedResult.radius`` of an example certified at none of the radii.
NOT_CERTIFIED = -1.0


@dataclasses.dataclass(frozen=True)
class Certification:
    """How to certify: made by :func:`smoothing` or :func:`bound_propagation`, which check it.

    Attributes:
      method: ``"smoothing"``, ``"ibp"`` or ``"crown"``.
      radii: ascending radii (no duplicates) at which certified accuracy is reported.
      norm: the norm of the radii (``"l2"`` for smoothing).
      sigma: smoothing noise standard deviation (``None`` for bound propagation).
      n0, n, alpha: smoothing's selection draws, estimation draws and failure
        probability (unused by bound propagation).
      batch_size: examples certified per call.
      noise_batch_size: smoothing: noise draws evaluated at once per example.
    """

    method: str
    radii: tuple[float, ...]
    norm: str
    sigma: float | None = None
    n0: int = 100
    n: int = 10_000
    alpha: float = 0.001
    batch_size: int = 100
    noise_batch_size: int = 100

    def describe(self) -> str:
        """One line: the method and its settings."""
        if self.method == "smoothing":
            return (
                f"randomized smoothing, {self.norm}, sigma={self.sigma:g}, n0={self.n0}, n={self.n}, "
                f"alpha={self.alpha:g}"
            )
        return f"bound propagation ({self.method.upper()}), {self.norm}"

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "radii": list(self.radii)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Certification:
        return cls(**{**d, "radii": tuple(float(r) for r in d["radii"])})


def _radii(radii: Any) -> tuple[float, ...]:
    if radii is None or isinstance(radii, str):
        raise ValueError(
            f"radii must be a sequence of floats >= 0, e.g. radii=(0.0, 0.25, 0.5), got {radii!r}"
        )
    try:
        values = np.asarray(radii, np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise ValueError(f"radii must be a sequence of floats >= 0, got {radii!r}") from e
    if values.size == 0:
        raise ValueError("radii is empty: pass at least one radius, e.g. radii=(0.0, 0.25, 0.5)")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"radii must be finite, got {values.tolist()}")
    if np.any(values < 0):
        raise ValueError(f"radii must be >= 0, got {float(values.min()):g}")
    return tuple(float(r) for r in np.unique(values))


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return check_steps(value, name)


def smoothing(
    *,
    sigma: float,
    radii: Sequence[float] | ArrayLike,
    n0: int = 100,
    n: int = 10_000,
    alpha: float = 0.001,
    batch_size: int = 100,
    noise_batch_size: int = 100,
) -> Certification:
    r"""Certify with randomized smoothing (Cohen et al., 2019) at L2 ``radii``.

    Args:
      sigma: noise standard deviation ``> 0`` (the one the model was trained with).
      radii: L2 radii ``>= 0`` to report certified accuracy at (sorted, duplicates dropped).
      n0: selection draws per example. n: estimation draws per example; with
        ``alpha`` it caps the radius: at most :math:`\sigma\,\Phi^{-1}(\alpha^{1/n})`.
      alpha: failure probability in ``(0, 1)``.
      batch_size: examples per call of :func:`jaxadv.certify.smooth_certify` (each
        chunk draws its own noise, so it is part of what the result depends on).
      noise_batch_size: noise draws evaluated at once per example (memory only:
        ``noise_batch_size * batch_size`` model inputs per step); at most ``n0``, the
        selection and the estimation share one compiled program.

    Raises:
      ValueError: ``sigma <= 0``, a negative or non-finite radius, ``alpha``
        outside ``(0, 1)``, or counts that are not positive ints.
    """
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.integer, np.floating)):
        raise ValueError(f"sigma must be a float > 0, got {sigma!r}")
    if not math.isfinite(float(sigma)) or float(sigma) <= 0:
        raise ValueError(f"sigma must be a finite float > 0 (the noise standard deviation), got {sigma!r}")
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, (int, float, np.floating))
        or not 0 < float(alpha) < 1
    ):
        raise ValueError(f"alpha must be a float in (0, 1), e.g. 0.001, got {alpha!r}")
    return Certification(
        method="smoothing",
        radii=_radii(radii),
        norm="l2",
        sigma=float(sigma),
        n0=_positive_int(n0, "n0"),
        n=_positive_int(n, "n"),
        alpha=float(alpha),
        batch_size=_positive_int(batch_size, "batch_size"),
        noise_batch_size=_positive_int(noise_batch_size, "noise_batch_size"),
    )


def bound_propagation(
    *,
    radii: Sequence[float] | ArrayLike,
    method: Literal["ibp", "crown"] = "crown",
    norm: Norm = "linf",
    batch_size: int = 100,
) -> Certification:
    """Certify the model itself with :func:`jaxadv.certify.verified` (IBP or CROWN) at each radius.

    Args:
      radii: radii ``>= 0`` (raw input units) of the ``norm`` ball, sorted,
        duplicates dropped; each costs one call of ``verified`` per chunk.
      method: ``"crown"`` (tighter) or ``"ibp"`` (cheaper).
      norm: ``"linf"``, ``"l2"`` or ``"l1"``.
      batch_size: examples per call of ``verified``.

    Raises:
      ValueError: an unknown method or norm, a negative or non-finite radius.
    """
    if method not in ("ibp", "crown"):
        raise ValueError(f"method must be 'ibp' or 'crown', got {method!r}")
    return Certification(
        method=method,
        radii=_radii(radii),
        norm=check_norm(norm),
        batch_size=_positive_int(batch_size, "batch_size"),
    )


@dataclasses.dataclass
class CertifiedResult:
    """Per-example certificates and the certified-accuracy curve.

    Attributes:
      certification: what was run (:class:`Certification`).
      radius: ``[n]`` float64; the certified radius of the *label*: for smoothing the
        smoothed classifier's radius where it predicts the label, for bound
        propagation the largest listed radius verified; ``-1`` where the example is
        certified at none (wrong, abstained, or not verified).
      abstained: ``[n]`` bool; the smoothed classifier abstained (always ``False``
        for bound propagation).
      seconds: wall-clock seconds spent certifying.
    """

    certification: Certification
    radius: np.ndarray
    abstained: np.ndarray
    seconds: float = 0.0

    @property
    def method(self) -> str:
        return self.certification.method

    @property
    def norm(self) -> str:
        return self.certification.norm

    @property
    def radii(self) -> np.ndarray:
        """``[R]`` float64, ascending."""
        return np.asarray(self.certification.radii, np.float64)

    @property
    def num_examples(self) -> int:
        return int(self.radius.shape[0])

    @property
    def certified(self) -> np.ndarray:
        """``[n, R]`` bool: example ``i`` is correct and certified at ``radii[j]``."""
        return self.radius[:, None] >= self.radii[None, :]

    @property
    def accuracy(self) -> np.ndarray:
        """``[R]`` certified accuracy at each radius: non-increasing (NaN without examples)."""
        if not self.num_examples:
            return np.full(len(self.radii), np.nan)
        return np.asarray(self.certified.mean(axis=0), np.float64)

    def accuracy_at(self, radius: float) -> float:
        """Certified accuracy at any ``radius >= 0``: ``mean(self.radius >= radius)``.

        Between listed radii of bound propagation this is the value at the next
        listed radius above (still a lower bound).
        """
        if radius < 0:
            raise ValueError(f"radius must be >= 0, got {radius}")
        return float(np.mean(self.radius >= radius)) if self.num_examples else float("nan")

    @property
    def num_abstained(self) -> int:
        return int(np.sum(self.abstained))

    @property
    def abstention_rate(self) -> float:
        return self.num_abstained / self.num_examples if self.num_examples else float("nan")

    def summary_lines(
        self, *, eps: float | None = None, norm: str | None = None, robust_accuracy: float | None = None
    ) -> list[str]:
        """Rows for a report; the row at ``eps`` (same ``norm``) shows ``robust_accuracy`` beside it."""
        whose = "the smoothed classifier" if self.method == "smoothing" else "this model"
        lines = [f"certified accuracy of {whose} (a lower bound): {self.certification.describe()}"]
        for r, acc in zip(self.radii, self.accuracy, strict=True):
            line = f"{'certified at r=' + f'{r:g}':<24}{acc:>10.2%}"
            if eps is not None and robust_accuracy is not None and norm == self.norm and math.isclose(r, eps):
                line += f"  (robust, an upper bound: {robust_accuracy:.2%})"
            lines.append(line)
        if self.method == "smoothing":
            lines.append(
                f"smoothing abstained on {self.num_abstained} of {self.num_examples} examples; each "
                f"certificate holds with probability >= {1 - self.certification.alpha:g}"
            )
        return lines

    def summary(self) -> str:
        return "\n".join(self.summary_lines())

    def __repr__(self) -> str:
        curve = ", ".join(f"{r:g}: {a:.4g}" for r, a in zip(self.radii, self.accuracy, strict=True))
        return (
            f"CertifiedResult(method={self.method!r}, norm={self.norm!r}, n={self.num_examples}, "
            f"accuracy={{{curve}}}, abstained={self.num_abstained})"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "certification": self.certification.to_dict(),
            "radii": self.radii.tolist(),
            "accuracy": [None if math.isnan(a) else float(a) for a in self.accuracy],
            "abstention_rate": None if not self.num_examples else self.abstention_rate,
            "radius": self.radius.astype(float).tolist(),
            "abstained": self.abstained.astype(bool).tolist(),
            "seconds": float(self.seconds),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CertifiedResult:
        return cls(
            certification=Certification.from_dict(d["certification"]),
            radius=np.asarray(d["radius"], np.float64),
            abstained=np.asarray(d["abstained"], bool),
            seconds=float(d.get("seconds", 0.0)),
        )


def _labels(y: Any) -> np.ndarray:
    labels = np.asarray(y)
    if labels.ndim == 2:
        onehot = labels.dtype.kind in "biuf" and np.all((labels == 0) | (labels == 1))
        if not (onehot and np.all(labels.sum(axis=1) == 1)):
            raise ValueError(
                f"y of shape {labels.shape} must be one-hot rows; pass [n] integer labels otherwise"
            )
        return np.argmax(labels, axis=1).astype(np.int32)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(
            f"y must be [n] integer labels (or [n, C] one-hot), got {labels.dtype} {labels.shape}"
        )
    return labels


def _checked(c: Certification) -> Certification:
    """``c`` rebuilt by its factory, so that a hand-made or loaded one is checked too."""
    if c.method == "smoothing":
        return smoothing(
            sigma=c.sigma,  # type: ignore[arg-type]
            radii=c.radii,
            n0=c.n0,
            n=c.n,
            alpha=c.alpha,
            batch_size=c.batch_size,
            noise_batch_size=c.noise_batch_size,
        )
    if c.method not in ("ibp", "crown"):
        raise ValueError(f"certify.method must be 'smoothing', 'ibp' or 'crown', got {c.method!r}")
    method: Any = c.method
    norm: Any = c.norm
    return bound_propagation(radii=c.radii, method=method, norm=norm, batch_size=c.batch_size)


class CertifiedStream:
    """Certifies examples as they arrive, in chunks of ``certify.batch_size``.

    :meth:`add` any number of batches of any sizes, then :meth:`result`: the same
    as :func:`certified_accuracy` on all the examples at once.
    """

    def __init__(self, logits_fn: LogitsFn, certify: Certification, *, key: PRNGKey, bounds: Bounds) -> None:
        if not isinstance(certify, Certification):
            raise ValueError(
                "certify must be made by jaxadv.evaluation.smoothing(sigma=..., radii=...) or "
                f"jaxadv.evaluation.bound_propagation(radii=...), got {type(certify).__name__}"
            )
        certify = _checked(certify)
        if certify.method == "smoothing":
            if key is None:
                raise ValueError("key is required for randomized smoothing: pass key=jax.random.key(0)")
            try:
                jax.random.fold_in(key, 0)
            except (TypeError, ValueError) as e:
                raise ValueError(f"key must be a PRNG key such as jax.random.key(0), got {key!r}") from e
        self.logits_fn = logits_fn
        self.certify = certify
        self.key = key
        self.bounds = bounds
        self._x: list[np.ndarray] = []
        self._y: list[np.ndarray] = []
        self._buffered = 0
        self._chunks = 0
        self._radius: list[np.ndarray] = []
        self._abstained: list[np.ndarray] = []
        self._seconds = 0.0

    def add(self, x: ArrayLike, y: ArrayLike) -> None:
        """Queue ``[b, ...]`` inputs and their labels; certifies every full chunk."""
        xs, ys = np.asarray(x), _labels(y)
        if xs.shape[:1] != ys.shape[:1]:
            raise ValueError(
                f"x and y must have the same number of examples, got {xs.shape[0]} and {ys.shape[0]}"
            )
        if xs.shape[0]:
            self._x.append(xs)
            self._y.append(ys)
            self._buffered += xs.shape[0]
        size = self.certify.batch_size
        while self._buffered >= size:
            xb, yb = np.concatenate(self._x), np.concatenate(self._y)
            self._run(xb[:size], yb[:size])
            self._x, self._y = ([xb[size:]], [yb[size:]]) if len(xb) > size else ([], [])
            self._buffered -= size

    def result(self) -> CertifiedResult:
        """Certifies what is left and returns the result for every example added."""
        if self._buffered:
            self._run(np.concatenate(self._x), np.concatenate(self._y))
            self._x, self._y, self._buffered = [], [], 0
        return CertifiedResult(
            certification=self.certify,
            radius=np.concatenate(self._radius) if self._radius else np.zeros(0, np.float64),
            abstained=np.concatenate(self._abstained) if self._abstained else np.zeros(0, bool),
            seconds=self._seconds,
        )

    def _run(self, x: np.ndarray, y: np.ndarray) -> None:
        c = self.certify
        start = time.perf_counter()
        m = len(y)
        # A short last chunk is padded (with its first example) to a power of two, at most
        # batch_size: few compiled shapes. The padding's results are dropped.
        rows = max(m, min(c.batch_size, 1 << max(3, (m - 1).bit_length())))
        if rows > m:
            x = np.concatenate([x, np.repeat(x[:1], rows - m, axis=0)])
            y = np.concatenate([y, np.repeat(y[:1], rows - m)])
        if c.method == "smoothing":
            assert c.sigma is not None
            cert = smooth_certify(
                self.logits_fn,
                x,
                y,
                key=jax.random.fold_in(self.key, self._chunks),
                sigma=c.sigma,
                n0=c.n0,
                n=c.n,
                alpha=c.alpha,
                batch_size=c.noise_batch_size,
            )
            prediction = np.asarray(cert.prediction)
            radius = np.where(prediction == y, np.asarray(cert.radius, np.float64), NOT_CERTIFIED)
            abstained = prediction < 0
        else:
            radius = np.full(len(y), NOT_CERTIFIED)
            for r in c.radii:  # ascending: the last radius verified wins
                ok = np.asarray(
                    verified(
                        self.logits_fn,
                        x,
                        y,
                        eps=r,
                        norm=c.norm,  # type: ignore[arg-type]
                        bounds=self.bounds,
                        method=c.method,  # type: ignore[arg-type]
                    )
                )
                radius = np.where(ok, r, radius)
            abstained = np.zeros(len(y), bool)
        self._radius.append(radius[:m].astype(np.float64))
        self._abstained.append(abstained[:m])
        self._seconds += time.perf_counter() - start
        self._chunks += 1


def certified_accuracy(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike,
    *,
    certify: Certification,
    key: PRNGKey = None,
    bounds: Bounds = (0.0, 1.0),
) -> CertifiedResult:
    r"""Certified accuracy of ``logits_fn`` at each radius of ``certify``: a lower bound on robust accuracy.

    ``result.accuracy[j]`` is the fraction of examples certified at
    ``certify.radii[j]``: for :func:`smoothing`, the smoothed classifier predicts
    the label with certified L2 radius :math:`\ge r` (abstentions count as wrong);
    for :func:`bound_propagation`, :func:`jaxadv.certify.verified` holds at some
    listed radius :math:`\ge r`. The curve is non-increasing in the radius.

    Examples are certified ``certify.batch_size`` at a time; chunk ``j`` draws its
    noise from ``jax.random.fold_in(key, j)``.

    Args:
      logits_fn: model ``x -> logits``.
      x: ``[n, ...]`` inputs inside ``bounds``.
      y: ``[n]`` integer labels (or ``[n, C]`` one-hot rows).
      certify: from :func:`smoothing` or :func:`bound_propagation`.
      key: PRNG key; required for smoothing, unused by bound propagation.
      bounds: ``(lo, hi)`` input box (bound propagation; smoothing's noise is not clipped).

    Returns:
      :class:`CertifiedResult`.

    Raises:
      ValueError: a ``certify`` not made by :func:`smoothing` or
        :func:`bound_propagation`, a missing key for smoothing, and the input
        errors of :func:`jaxadv.certify.smooth_certify` and
        :func:`jaxadv.certify.verified` (non-finite ``x``, labels out of range...).
    """
    stream = CertifiedStream(logits_fn, certify, key=key, bounds=bounds)
    stream.add(x, y)
    return stream.result()
