r"""Verification of a label: lower bounds on the margins :math:`z_y - z_j` over the threat model.

The label ``y`` is verified at ``x`` when :math:`\min_{x'} z_y(x') - z_j(x') > 0` for
every :math:`j \ne y` over the ball :math:`B_\epsilon(x)\cap[lo, hi]`: no input in
the threat model is classified otherwise (ties count as not verified).
"""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp

from jaxadv.certify.crown import check_batch_size, check_intermediate, crown_lower
from jaxadv.certify.intervals import _ibp, checked_problem
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, Norm

__all__ = ["margin_bounds", "verified"]

Method = Literal["crown", "ibp"]


def margin_bounds(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike,
    *,
    eps: float | ArrayLike,
    norm: Norm = "linf",
    bounds: Bounds = (0.0, 1.0),
    method: Method = "crown",
    batch_size: int = 32,
) -> Array:
    r"""Lower bounds on :math:`z_y(x') - z_j(x')` for every class ``j`` over the threat model.

    * ``method="ibp"``: :math:`\underline{z}_y - \overline{z}_j` from
      :func:`ibp_bounds`.
    * ``method="crown"``: :func:`crown_bounds` with the specification rows
      :math:`e_y - e_j` folded into the last layer (tighter than combining logit
      bounds: the weights :math:`W_y - W_j` are bounded together).

    Args:
      logits_fn, x, eps, norm, bounds: as for :func:`ibp_bounds`.
      y: ``[batch]`` integer labels (or ``[batch, C]`` one-hot; the argmax is used).
      method: ``"crown"`` or ``"ibp"``.
      batch_size: examples bounded at once by CROWN (static).

    Returns:
      ``[batch, C]`` float32; the entry of class ``y`` is 0 (the margin to itself).
    """
    if method not in ("crown", "ibp"):
        raise ValueError(f"method must be 'crown' or 'ibp', got {method!r}")
    if y is None:
        raise ValueError("y is required: pass the labels to verify")
    problem, norm_name = checked_problem(logits_fn, x, y, eps=eps, norm=norm, bounds=bounds)
    labels = problem.labels
    if labels.ndim == 2:
        labels = jnp.argmax(labels, axis=-1)
    num_classes = problem.num_classes
    onehot = jnp.eye(num_classes, dtype=jnp.float32)[labels]
    if method == "ibp":
        lower, upper = _ibp(problem.model, problem.params, problem.x, problem.lo, problem.hi, problem.eps)
        own = jnp.sum(lower * onehot, axis=1, keepdims=True)
        margins = own - upper
    else:
        # Row j: e_y - e_j (the row of class y is zero).
        coef = onehot[:, None, :] - jnp.eye(num_classes, dtype=jnp.float32)[None]
        margins = crown_lower(
            problem,
            coef,
            norm=norm_name,
            intermediate=check_intermediate("crown"),
            batch_size=check_batch_size(batch_size),
        )
    return jnp.where(onehot > 0, 0.0, margins)


def verified(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike,
    *,
    eps: float | ArrayLike,
    norm: Norm = "linf",
    bounds: Bounds = (0.0, 1.0),
    method: Method = "crown",
    batch_size: int = 32,
) -> Array:
    """``[batch]`` bool: whether every margin lower bound of :func:`margin_bounds` is positive,
    i.e. ``logits_fn`` provably predicts ``y`` on the whole threat model around ``x``."""
    margins = margin_bounds(
        logits_fn, x, y, eps=eps, norm=norm, bounds=bounds, method=method, batch_size=batch_size
    )
    labels = jnp.asarray(y)
    if labels.ndim == 2:
        labels = jnp.argmax(labels, axis=-1)
    num_classes = margins.shape[1]
    own = jnp.arange(num_classes)[None, :] == labels[:, None]
    return jnp.all(own | (margins > 0), axis=1)
