r"""A gradient source for models that give scores but no gradient: finite differences.

:class:`FiniteDifference` estimates the ascent gradient from the loss at
antithetic pairs of random probes around ``x`` (SPSA: Rademacher probes,
Uesato et al., 2018; NES: Gaussian probes, Ilyas et al., 2018):

.. math::
    \hat g = \frac{s}{2\delta K} \sum_{k=1}^{K}
      \big(L(f(x + \delta u_k), y) - L(f(x - \delta u_k), y)\big)\, u_k ,

with :math:`K` = ``num_samples``, :math:`\delta` = ``scale`` and :math:`s = -1` when
``targeted``. It only evaluates the model (``2 K`` evaluations per example, as
one batched call), so it works on :func:`jaxadv.from_callable` models; it is
the estimate inside :func:`jaxadv.spsa` and :func:`jaxadv.nes`, and a part for
:class:`jaxadv.compose.Attack`::

    attack = compose.Attack(compose.finite_difference(num_samples=32, scale=0.01), compose.momentum(1.0))
    x_adv = attack(logits_fn, x, y, key=key, eps=8 / 255, steps=20)

is a score-based momentum attack (each step costs ``2 * num_samples`` queries);
with ``count_queries=True`` the attack counts them and stops each example at
its first success, as :func:`jaxadv.spsa` does.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv._core.rows import select_rows
from jaxadv.compose.sources import Gradient, Model, _pytree
from jaxadv.keys import draw_rows, fold_rows, row_keys
from jaxadv.losses import as_onehot, cw_margin, finite_rows, get_loss
from jaxadv.threat_models import per_example, row_sum
from jaxadv.typing import Array, ArrayLike, Bounds, LossFn, PRNGKey
from jaxadv.validation import check_finite

__all__ = ["DISTRIBUTIONS", "FiniteDifference", "finite_difference"]

#: Probe distributions: ``"rademacher"`` (SPSA) and ``"gaussian"`` (NES).
DISTRIBUTIONS = ("rademacher", "gaussian")

# The key of the model's own draw for a randomised model (independent of the probes').
_MODEL = 0xFD


@_pytree(data=("scale", "lo", "hi"), meta=("loss", "num_samples", "distribution"))
@dataclasses.dataclass(frozen=True)
class FiniteDifference:
    r"""The antithetic finite-difference estimate of the loss gradient (see the module
    docstring), a gradient source: ``source(model, x, labels, *, key, targeted) -> Gradient``.

    Per call it draws ``num_samples`` probes :math:`u_k` per example from that
    example's key (``[batch, samples, ...]``, batch-major, so that merged into
    one ``[batch * 2 * samples]`` query each example's probes stay on the device
    that holds the example), evaluates the model at :math:`x \pm \delta u_k`
    (clipped into ``[lo, hi]`` when given; a randomised model gets one key per
    example, the same for its ``2 K`` probes) and averages in
    :func:`jaxadv.threat_models.row_sum`'s order, so an example's estimate does not depend on
    the batch it is in.

    Attributes:
      loss: per-example loss ``loss(logits, onehot) -> [batch]`` (static).
      num_samples: antithetic pairs :math:`K` per estimate (static).
      scale: :math:`\delta`, scalar or ``[batch]`` (traced; finite, ``> 0``).
      distribution: ``"rademacher"`` or ``"gaussian"`` (static).
      lo: lower bound of the box the probes are clipped into (traced), or ``None``.
      hi: upper bound of that box (traced), or ``None``.

    The returned :class:`~jaxadv.compose.Gradient` has ``loss`` the mean loss over
    the probes, ``logits=None`` (the model was not evaluated at ``x``), and
    ``ok`` false (gradient 0) for an example where a probe's scores or the
    estimate are not finite.
    """

    loss: LossFn = cw_margin
    num_samples: int = 16
    scale: Any = 0.01
    distribution: str = "rademacher"
    lo: Any = None
    hi: Any = None

    @property
    def needs_key(self) -> bool:
        """The probes are random: an attack using this source needs a ``key``."""
        return True

    @property
    def queries(self) -> int:
        """Model evaluations per call and example: ``2 * num_samples``."""
        return 2 * self.num_samples

    def check(self) -> None:
        """Refuse a ``scale`` that is not a finite number ``> 0``."""
        check_finite(self.scale, "scale", minimum=0.0, above=True)

    def __call__(self, model: Model, x: Array, labels: Array, *, key: PRNGKey, targeted: bool) -> Gradient:
        b, n = x.shape[0], self.num_samples
        shape = (n, *x.shape[1:])
        key = row_keys(key, b)  # one key, or one per example
        if self.distribution == "rademacher":
            u = draw_rows(lambda k: jax.random.rademacher(k, shape, dtype=jnp.float32), key)
        else:
            u = draw_rows(lambda k: jax.random.normal(k, shape, jnp.float32), key)
        scale_b = per_example(self.scale, x)
        scale_s = scale_b[:, None] if scale_b.ndim else scale_b
        pts = jnp.stack([x[:, None] + scale_s * u, x[:, None] - scale_s * u], axis=1)
        if self.lo is not None or self.hi is not None:
            pts = jnp.clip(pts, _probe_axes(self.lo, x), _probe_axes(self.hi, x))
        # Each example's 2n probes are consecutive rows: its model key, repeated.
        model_keys = jnp.repeat(fold_rows(key, _MODEL), 2 * n, axis=0)
        z = model(pts.reshape((b * 2 * n, *x.shape[1:])), model_keys)
        z = z.astype(jnp.float32)
        rep = jnp.repeat(as_onehot(labels, z.shape[-1]), 2 * n, axis=0)
        values = self.loss(z, rep).reshape(b, 2, n)
        f = (-1.0 if targeted else 1.0) * values
        diff = (f[:, 0] - f[:, 1]).reshape((b, n) + (1,) * (x.ndim - 1))
        grad = row_sum(diff * u) / n / (2.0 * scale_b)
        probed = jnp.all(finite_rows(z).reshape(b, 2 * n), axis=1)
        ok = probed & jnp.all(jnp.isfinite(grad.reshape(b, -1)), axis=1)
        grad = select_rows(ok, grad, 0.0)
        return Gradient(row_sum(values.reshape(b, 2 * n)) / (2 * n), None, grad, ok)


def _probe_axes(bound: Any, x: Array) -> Any:
    """A bound of ``x``'s full shape gains the (pair, probe) axes of the probes."""
    if bound is None:
        return None
    return bound[:, None, None] if jnp.ndim(bound) == x.ndim else bound


def finite_difference(
    loss: str | LossFn = cw_margin,
    *,
    num_samples: int = 16,
    scale: ArrayLike = 0.01,
    distribution: str = "rademacher",
    bounds: Bounds | None = None,
) -> FiniteDifference:
    """:class:`FiniteDifference` of ``loss`` (default the margin :func:`jaxadv.cw_margin`,
    as in :func:`jaxadv.spsa`) from ``num_samples`` antithetic pairs at ``scale``.

    ``distribution``: ``"rademacher"`` (SPSA) or ``"gaussian"`` (NES). ``bounds``:
    the box ``(lo, hi)`` the probes are clipped into; ``None`` leaves them
    unclipped (the model is then queried up to ``scale`` outside the box).
    """
    if not isinstance(num_samples, (int, np.integer)) or isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    scale_arr = jnp.asarray(scale, jnp.float32)
    if scale_arr.ndim > 1:
        raise ValueError(f"scale must be a scalar or [batch], got shape {scale_arr.shape}")
    lo = hi = None
    if bounds is not None:
        if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
            raise ValueError(f"bounds must be a pair (lo, hi) or None, got {bounds!r}")
        lo, hi = jnp.asarray(bounds[0], jnp.float32), jnp.asarray(bounds[1], jnp.float32)
    source = FiniteDifference(get_loss(loss), int(num_samples), scale_arr, distribution, lo, hi)
    source.check()
    return source
