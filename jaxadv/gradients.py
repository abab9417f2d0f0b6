"""Input gradients of a per-example loss, shared by the gradient attacks."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxadv.losses import as_onehot
from jaxadv.typing import Array, LogitsFn, LossFn


def loss_and_grad(
    logits_fn: LogitsFn,
    x: Array,
    labels: Array,
    *,
    loss: LossFn,
    targeted: bool,
) -> tuple[Array, Array, Array]:
    r"""Per-example loss, logits and the ascent gradient with respect to ``x``.

    The gradient is that of :math:`s \sum_b L(f(x_b), y_b)` with :math:`s = +1`
    (untargeted: ascend the loss of the true label) or :math:`s = -1` (targeted:
    descend the loss of the target). Summing, not averaging, keeps each example's
    gradient independent of the batch. Logits and loss are computed in float32.

    Args:
      logits_fn: ``x -> logits``.
      x: ``[batch, ...]`` float32 inputs.
      labels: ``[batch]`` integer labels or ``[batch, C]`` one-hot / soft labels.
      loss: per-example loss ``(logits, onehot) -> [batch]``.
      targeted: whether to descend instead of ascend.

    Returns:
      ``(loss [batch], logits [batch, C], grad [batch, ...])``.
    """
    sign = -1.0 if targeted else 1.0

    def objective(xi: Array) -> tuple[Array, tuple[Array, Array]]:
        z = logits_fn(xi).astype(jnp.float32)
        per_example = loss(z, as_onehot(labels, z.shape[-1]))
        return sign * jnp.sum(per_example), (per_example, z)

    (_, (per_example, z)), g = jax.value_and_grad(objective, has_aux=True)(x)
    return per_example, z, g
