r"""Per-example losses that attacks ascend (or descend, when targeted).

Every loss has the signature ``loss(logits, onehot) -> [batch]`` with ``logits``
and ``onehot`` of shape ``[batch, num_classes]``. Attacks take the gradient of the
*sum* over the batch, so each example's gradient is independent of the others:
attacking a batch equals attacking each example alone.

An untargeted attack ascends the loss of the true label; a targeted attack
descends the loss of the target label. Custom losses are welcome: any hashable
callable with this signature (a module-level function compiles once; a new
``functools.partial`` object per call compiles once per object).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxadv.typing import Array


def as_onehot(labels: Array, num_classes: int) -> Array:
    """Integer labels ``[batch]`` -> one-hot ``[batch, num_classes]`` float32.

    Float labels of shape ``[batch, num_classes]`` (one-hot or soft) pass through.
    """
    labels = jnp.asarray(labels)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return labels.astype(jnp.float32)


def cross_entropy(logits: Array, onehot: Array) -> Array:
    r"""Softmax cross-entropy :math:`-\sum_c y_c \log \mathrm{softmax}(z)_c`, per example."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(onehot * logp, axis=-1)


def cw_margin(logits: Array, onehot: Array) -> Array:
    r"""Carlini–Wagner margin :math:`\max_{j \ne y} z_j - z_y`, per example.

    Positive exactly when the model does not predict ``y``. Untargeted attacks
    ascend it (push another class above ``y``); targeted attacks descend it for
    the target ``t`` (push ``z_t`` above every other logit). It works on the
    logits, so it does not saturate like cross-entropy does.
    """
    z = logits.astype(jnp.float32)
    true = jnp.sum(onehot * z, axis=-1)
    other = jnp.max(jnp.where(onehot > 0, -jnp.inf, z), axis=-1)
    return other - true


def dlr(logits: Array, onehot: Array) -> Array:
    r"""Difference of logits ratio (Croce & Hein, 2020), per example.

    .. math::
        \mathrm{DLR}(z, y) = -\frac{z_y - \max_{i \ne y} z_i}{z_{\pi_1} - z_{\pi_3}}

    with :math:`z_{\pi_1} \ge z_{\pi_2} \ge \dots` the sorted logits. Positive exactly
    when the model does not predict ``y``; invariant to shifting and rescaling the
    logits, so it does not reward a model for merely scaling its outputs. Needs at
    least three classes. Untargeted attacks ascend it (the "dlr" loss of
    :func:`jaxadv.apgd`).
    """
    z = logits.astype(jnp.float32)
    top = -jnp.sort(-z, axis=-1)[:, :3]  # a sort: lax.top_k would all-gather a sharded batch
    true = jnp.sum(onehot * z, axis=-1)
    other = jnp.max(jnp.where(onehot > 0, -jnp.inf, z), axis=-1)
    return -(true - other) / (top[:, 0] - top[:, 2] + 1e-12)
