"""Attacks from parts: gradient sources, update rules, step sizes, threat model, bookkeeping.

Every iterative gradient attack of the library (FGSM, BIM, PGD, MI/NI/VMI/TI/
DI-FGSM, EOT-PGD, APGD and APGD-T in L-inf, L2 and L1, and the score-based SPSA
and NES) is an :class:`Attack` built from these parts and run by one loop body
(APGD's runs wrapped in :func:`restarts`); a user's own attack is built the
same way (see the "Build your own attack" page of the docs)::

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
    Outcome,
    QueryCount,
    charge,
    init_best,
    init_best_loss,
    merge,
    no_outcome,
    objective,
    record,
    record_loss,
    select,
)
from jaxadv.compose.estimates import FiniteDifference, finite_difference
from jaxadv.compose.loop import Attack
from jaxadv.compose.restarts import Restarts, restarts
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
    Progress,
    SparsityCheckpoints,
    SparsityState,
    checkpoint_halving,
    checkpoint_schedule,
    fixed,
    l1_checkpoint_schedule,
    sparsity_checkpoints,
)
from jaxadv.compose.updates import (
    Context,
    HeavyBall,
    HeavyBallState,
    Momentum,
    Nesterov,
    SparseSteepest,
    Steepest,
    UpdateRule,
    VarianceTuning,
    heavy_ball,
    momentum,
    nesterov,
    sparse_sign,
    sparse_steepest,
    steepest,
    variance_tuning,
)

__all__ = [
    "Attack",
    "Best",
    "BestLoss",
    "CheckpointHalving",
    "Context",
    "EOT",
    "FiniteDifference",
    "Fixed",
    "FixedState",
    "Gradient",
    "GradientSource",
    "HalvingState",
    "HeavyBall",
    "HeavyBallState",
    "InputDiversity",
    "LossGradient",
    "Momentum",
    "Nesterov",
    "Outcome",
    "Progress",
    "QueryCount",
    "Restarts",
    "SparseSteepest",
    "SparsityCheckpoints",
    "SparsityState",
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
    "heavy_ball",
    "init_best",
    "init_best_loss",
    "input_diversity",
    "l1_checkpoint_schedule",
    "loss_gradient",
    "merge",
    "momentum",
    "nesterov",
    "no_outcome",
    "objective",
    "record",
    "record_loss",
    "restarts",
    "select",
    "sparse_sign",
    "sparse_steepest",
    "sparsity_checkpoints",
    "steepest",
    "translation_invariant",
    "variance_tuning",
]
