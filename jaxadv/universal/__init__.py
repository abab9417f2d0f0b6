"""Dataset-level attacks: one perturbation, or one patch, for a whole dataset.

* Universal adversarial perturbations (:mod:`jaxadv.universal.perturbation`):
  :func:`init_universal` and :func:`universal_step` to call in one's own
  optax loop, :func:`universal_perturbation` as the ready-made loop,
  :func:`apply_universal`, :func:`fooling_rate`, and :func:`steepest_sgd`
  (sign-SGD and its L2/L1 counterparts as an optax transformation).
* Adversarial patches (:mod:`jaxadv.universal.patch`): :func:`init_patch` and
  :func:`patch_step` (expectation over random placements), :func:`adversarial_patch`
  as the ready-made loop, :func:`patch_success_rate` and :func:`success_by_patch_size`;
  their placement (:mod:`jaxadv.universal.placement`): :func:`place_patch` and
  :func:`apply_patch` (differentiable placement with location, scale and
  rotation) and :func:`sample_placement`.
* :func:`success_rate`: how often a dataset-level attack fools the model, one
  definition for both.
"""

from jaxadv.universal.patch import (
    PatchSizeResult,
    PatchState,
    adversarial_patch,
    init_patch,
    patch_step,
    patch_success_rate,
    success_by_patch_size,
)
from jaxadv.universal.perturbation import (
    UniversalState,
    apply_universal,
    fooling_rate,
    init_universal,
    steepest_sgd,
    success_rate,
    universal_perturbation,
    universal_step,
)
from jaxadv.universal.placement import Placement, apply_patch, place_patch, sample_placement

__all__ = [
    "PatchSizeResult",
    "PatchState",
    "Placement",
    "UniversalState",
    "adversarial_patch",
    "apply_patch",
    "apply_universal",
    "fooling_rate",
    "init_patch",
    "init_universal",
    "patch_step",
    "patch_success_rate",
    "place_patch",
    "sample_placement",
    "steepest_sgd",
    "success_by_patch_size",
    "success_rate",
    "universal_perturbation",
    "universal_step",
]
