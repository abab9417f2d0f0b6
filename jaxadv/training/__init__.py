"""Adversarial and certified training that composes with optax: PGD-AT, Fast-AT, TRADES, Free,
Gaussian augmentation, SmoothAdv, IBP and CROWN-IBP.

* Losses (:mod:`jaxadv.training.losses`): :func:`pgd_at_loss`,
  :func:`fast_at_loss`, :func:`trades_loss`, scalars whose parameter gradient is
  the method's training gradient; they drop into any JAX + optax loop.
* Losses for certified robustness (:mod:`jaxadv.training.certified`):
  :func:`gaussian_augmentation_loss` and :func:`smoothadv_loss` (randomized
  smoothing), :func:`ibp_loss` with :func:`ibp_schedule`, and :func:`crown_ibp_loss`
  (bound propagation).
* Whole steps (:mod:`jaxadv.training.steps`): :func:`make_train_step` and
  :func:`make_free_train_step` for Flax linen (:class:`TrainState`),
  :func:`make_nnx_train_step` and :func:`make_nnx_free_train_step` for Flax NNX.
* A guard against catastrophic overfitting and against training stuck at chance
  accuracy (:mod:`jaxadv.training.monitor`): :func:`robust_accuracy_monitor`.
"""

from jaxadv.training.certified import (
    crown_ibp_loss,
    gaussian_augmentation_loss,
    ibp_loss,
    ibp_schedule,
    smoothadv_loss,
)
from jaxadv.training.losses import fast_at_loss, kl_divergence, pgd_at_loss, trades_loss
from jaxadv.training.monitor import (
    CatastrophicOverfittingWarning,
    ChanceAccuracyWarning,
    MonitorState,
    robust_accuracy,
    robust_accuracy_monitor,
    update_monitor,
)
from jaxadv.training.nnx_steps import make_nnx_free_train_step, make_nnx_train_step
from jaxadv.training.steps import (
    TrainState,
    init_train_state,
    make_free_train_step,
    make_train_step,
)

__all__ = [
    "CatastrophicOverfittingWarning",
    "ChanceAccuracyWarning",
    "MonitorState",
    "TrainState",
    "crown_ibp_loss",
    "fast_at_loss",
    "gaussian_augmentation_loss",
    "ibp_loss",
    "ibp_schedule",
    "init_train_state",
    "kl_divergence",
    "make_free_train_step",
    "make_nnx_free_train_step",
    "make_nnx_train_step",
    "make_train_step",
    "pgd_at_loss",
    "robust_accuracy",
    "robust_accuracy_monitor",
    "smoothadv_loss",
    "trades_loss",
    "update_monitor",
]
