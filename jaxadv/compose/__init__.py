"""Attacks from parts: gradient sources, update rules, step sizes, threat model, bookkeeping.

Every iterative gradient attack of the library (FGSM, BIM, PGD, MI/NI/VMI/TI/
DI-FGSM, EOT-PGD, and the score-based SPSA and NES) is an :class:`Attack`
built from these parts and run by one loop body; a user's own attack is built
the same way (see the "Build your own attack" page of the docs)::

    from jaxadv import compose

    attack = compose.Attack(
        compose.eot(num_samples=8, transform=my_random_transform),
        compose.momentum(0.9),
        norm="l2",
        random_start=True,
    )
    x_adv = attack(logits_fn, x, y, key=key, eps=0.5, steps=20)
"""

from jaxadv.compose.bookkeeping import (
    Best,
    BestLoss,
    QueryCount,
    charge,
    init_best,
    init_best_loss,
    objective,
    record,
    record_loss,
    select,
)
from jaxadv.compose.estimates import FiniteDifference, finite_difference
from jaxadv.compose.loop import Attack
from jaxadv.compose.sources import (
    EOT,
    Gradient,
    GradientSource,
    InputDiversity,
    LossGradient,
    TranslationInvariant,
    diverse_inputs,
    eot,
    gaussian_kernel,
    gaussian_kernel_1d,
    input_diversity,
    loss_gradient,
    translation_invariant,
)
from jaxadv.compose.step_sizes import (
    CheckpointHalving,
    Fixed,
    FixedState,
    HalvingState,
    checkpoint_halving,
    checkpoint_schedule,
    fixed,
)
from jaxadv.compose.updates import (
    Context,
    Momentum,
    Nesterov,
    Steepest,
    UpdateRule,
    VarianceTuning,
    momentum,
    nesterov,
    steepest,
    variance_tuning,
)

__all__ = [
    "EOT",
    "Attack",
    "Best",
    "BestLoss",
    "CheckpointHalving",
    "Context",
    "FiniteDifference",
    "Fixed",
    "FixedState",
    "Gradient",
    "GradientSource",
    "HalvingState",
    "InputDiversity",
    "LossGradient",
    "Momentum",
    "Nesterov",
    "QueryCount",
    "Steepest",
    "TranslationInvariant",
    "UpdateRule",
    "VarianceTuning",
    "charge",
    "checkpoint_halving",
    "checkpoint_schedule",
    "diverse_inputs",
    "eot",
    "finite_difference",
    "fixed",
    "gaussian_kernel",
    "gaussian_kernel_1d",
    "init_best",
    "init_best_loss",
    "objective",
    "input_diversity",
    "loss_gradient",
    "momentum",
    "nesterov",
    "record",
    "record_loss",
    "select",
    "steepest",
    "translation_invariant",
    "variance_tuning",
]
