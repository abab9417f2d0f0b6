"""Adversarial training that composes with optax: PGD-AT, Fast-AT, TRADES and Free.

* Losses (:mod:`jaxadv.training.losses`): :func:`pgd_at_loss`,
  :func:`fast_at_loss`, :func:`trades_loss`, scalars whose parameter gradient is
  the method's training gradient; they drop into any JAX + optax loop.
* Whole steps (:mod:`jaxadv.training.steps`): :func:`make_train_step` and
  :func:`make_free_train_step` for Flax linen (:class:`TrainState`),
  :func:`make_nnx_train_step` and :func:`make_nnx_free_train_step` for Flax NNX.
* A guard against catastrophic overfitting (:mod:`jaxadv.training.monitor`):
  :func:`robust_accuracy_monitor`.
"""

from jaxadv.training.losses import fast_at_loss, kl_divergence, pgd_at_loss, trades_loss
from jaxadv.training.monitor import (
    CatastrophicOverfittingWarning,
    MonitorState,
    robust_accuracy,
    robust_accuracy_monitor,
    update_monitor,
)
from jaxadv.training.steps import (
    TrainState,
    init_train_state,
    make_free_train_step,
    make_nnx_free_train_step,
    make_nnx_train_step,
    make_train_step,
)

__all__ = [
    "CatastrophicOverfittingWarning",
    "MonitorState",
    "TrainState",
    "fast_at_loss",
    "init_train_state",
    "kl_divergence",
    "make_free_train_step",
    "make_nnx_free_train_step",
    "make_nnx_train_step",
    "make_train_step",
    "pgd_at_loss",
    "robust_accuracy",
    "robust_accuracy_monitor",
    "trades_loss",
    "update_monitor",
]
