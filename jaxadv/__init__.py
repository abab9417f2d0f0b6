"""jaxadv: adversarial examples for JAX models, as pure, compiled functions.

The public API is this flat namespace; implementation lives in the modules
named in each import below.
"""

from jaxadv.attacks.base import Problem, prepare
from jaxadv.attacks.iterative import bim, pgd
from jaxadv.attacks.single_step import fgsm
from jaxadv.engine import iterate
from jaxadv.gradients import loss_and_grad
from jaxadv.losses import as_onehot, cross_entropy, cw_margin
from jaxadv.models import from_apply, from_flax, from_nnx, logits, predict
from jaxadv.targets import least_likely, random_targets
from jaxadv.threat_models import (
    clip_to_bounds,
    norm_of,
    per_example,
    project,
    project_to_feasible,
    random_start,
    steepest_direction,
)
from jaxadv.validation import checked

__version__ = "0.1.0"

__all__ = [
    "Problem",
    "as_onehot",
    "bim",
    "checked",
    "clip_to_bounds",
    "cross_entropy",
    "cw_margin",
    "fgsm",
    "from_apply",
    "from_flax",
    "from_nnx",
    "iterate",
    "least_likely",
    "logits",
    "loss_and_grad",
    "norm_of",
    "per_example",
    "pgd",
    "predict",
    "prepare",
    "project",
    "project_to_feasible",
    "random_start",
    "random_targets",
    "steepest_direction",
]
