r"""The two binomial tests of randomized smoothing, in float64.

Both reduce to the regularised incomplete beta function
:math:`I_p(a, b)` (:func:`jax.scipy.special.betainc`), through the identity
:math:`P(\mathrm{Bin}(n, p) \ge k) = I_p(k, n - k + 1)` for :math:`k \ge 1`. They
run in float64 (under :func:`jax.enable_x64`) whatever the global setting: in
float32 the tail probability near :math:`p = 1` is off by several percent for
``n = 100_000``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import betainc

from jaxadv.typing import ArrayLike

__all__ = ["clopper_pearson_lower", "two_sided_binomial_pvalue"]

_BISECTION_STEPS = 80  # halves [0, 1] below float64 resolution


@jax.jit
def _cp_lower(k: jax.Array, n: jax.Array, alpha: jax.Array) -> jax.Array:
    a = jnp.maximum(k, 1.0)
    b = n - k + 1.0

    def body(_: int, state: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        lo, hi = state
        mid = (lo + hi) / 2
        # P(Bin(n, mid) >= k) grows with mid: above alpha means mid is past the bound.
        too_high = betainc(a, b, mid) > alpha
        return jnp.where(too_high, lo, mid), jnp.where(too_high, mid, hi)

    lo, _ = jax.lax.fori_loop(0, _BISECTION_STEPS, body, (jnp.zeros_like(a), jnp.ones_like(a)))
    return jnp.where(k > 0, lo, 0.0)


@jax.jit
def _pvalue(k: jax.Array, n: jax.Array) -> jax.Array:
    top = jnp.maximum(k, n - k)
    tail = betainc(jnp.maximum(top, 1.0), n - top + 1.0, 0.5)
    return jnp.where(n > 0, jnp.minimum(1.0, 2.0 * tail), 1.0)


def _counts(k: ArrayLike, n: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    k_np, n_np = np.broadcast_arrays(np.asarray(k), np.asarray(n))
    if not (np.issubdtype(k_np.dtype, np.integer) and np.issubdtype(n_np.dtype, np.integer)):
        raise ValueError(f"k and n must be integer counts, got dtypes {k_np.dtype} and {n_np.dtype}")
    if np.any(k_np < 0) or np.any(k_np > n_np):
        raise ValueError("counts must satisfy 0 <= k <= n")
    return k_np, n_np


def _run64(fn: Any, *arrays: np.ndarray) -> np.ndarray:
    """``fn`` on flattened float64 copies padded to a multiple of 1024 (few compilations)."""
    shape = arrays[0].shape
    size = max(1, -(-int(np.prod(shape)) // 1024)) * 1024
    flat = [np.resize(np.ravel(a).astype(np.float64), size) for a in arrays]
    with jax.enable_x64(True):
        out = np.asarray(fn(*[jnp.asarray(a, jnp.float64) for a in flat]))
    return out[: int(np.prod(shape))].reshape(shape)


def clopper_pearson_lower(k: ArrayLike, n: ArrayLike, *, alpha: float) -> np.ndarray:
    r"""One-sided Clopper-Pearson lower confidence bound on a binomial proportion.

    The :math:`p_{lo}` that solves :math:`P(\mathrm{Bin}(n, p_{lo}) \ge k) = \alpha`
    (the :math:`\alpha` quantile of :math:`\mathrm{Beta}(k, n - k + 1)`), and 0 for
    ``k = 0``: :math:`P(p \ge p_{lo}) \ge 1 - \alpha` over the draw of ``k``. Found by
    bisection and rounded down, so the returned value never exceeds the exact one.

    Args:
      k: integer successes (any shape), ``0 <= k <= n``.
      n: integer trials, broadcasting against ``k``.
      alpha: significance level in ``(0, 1)``.

    Returns:
      float64 NumPy array of the broadcast shape.
    """
    k_np, n_np = _counts(k, n)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    alpha_np = np.full(k_np.shape, float(alpha))
    return _run64(_cp_lower, k_np, n_np, alpha_np)


def two_sided_binomial_pvalue(k: ArrayLike, n: ArrayLike) -> np.ndarray:
    r"""Two-sided p-value of ``k`` successes in ``n`` trials against :math:`p = 1/2`.

    :math:`\min(1, 2 P(X \ge \max(k, n-k)))` with :math:`X \sim \mathrm{Bin}(n, 1/2)`:
    the probability of an outcome at least as far from :math:`n/2` (the test of
    Cohen et al.'s PREDICT between the two top counts). 1 for ``n = 0``.

    Returns:
      float64 NumPy array of the broadcast shape of ``k`` and ``n``.
    """
    k_np, n_np = _counts(k, n)
    return _run64(_pvalue, k_np, n_np)
