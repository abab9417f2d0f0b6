"""jaxadv: adversarial examples for JAX models, as pure, compiled functions.

The public API is this flat namespace; implementation lives in the modules
named in each import below.
"""

from jaxadv.attacks.base import Problem, prepare
from jaxadv.attacks.iterative import bim, eot_pgd, pgd
from jaxadv.attacks.single_step import fgsm
from jaxadv.engine import iterate
from jaxadv.evaluation import EvaluationResult, evaluate
from jaxadv.gradients import loss_and_grad
from jaxadv.keys import example_keys
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
    row_sum,
    steepest_direction,
)
from jaxadv.validation import checked

# isort: split
# Attack families and tools that list their public names in ``__all__``.
from jaxadv import callables as _callables
from jaxadv import certify, compose, config, evaluation, keys, sharding, training, universal, zoo
from jaxadv import success as _success
from jaxadv.attacks import apgd as _apgd
from jaxadv.attacks import blackbox as _blackbox
from jaxadv.attacks import cw as _cw
from jaxadv.attacks import decision_based as _decision_based
from jaxadv.attacks import deepfool as _deepfool
from jaxadv.attacks import ead as _ead
from jaxadv.attacks import fab as _fab
from jaxadv.attacks import fmn as _fmn
from jaxadv.attacks import gradient_free as _gradient_free
from jaxadv.attacks import jsma as _jsma
from jaxadv.attacks import momentum as _momentum
from jaxadv.attacks import sparse_rs as _sparse_rs
from jaxadv.attacks import square as _square
from jaxadv.attacks import transfer as _transfer
from jaxadv.attacks.apgd import *  # noqa: F403
from jaxadv.attacks.blackbox import *  # noqa: F403
from jaxadv.attacks.cw import *  # noqa: F403
from jaxadv.attacks.decision_based import *  # noqa: F403
from jaxadv.attacks.deepfool import *  # noqa: F403
from jaxadv.attacks.ead import *  # noqa: F403
from jaxadv.attacks.fab import *  # noqa: F403
from jaxadv.attacks.fmn import *  # noqa: F403
from jaxadv.attacks.gradient_free import *  # noqa: F403
from jaxadv.attacks.jsma import *  # noqa: F403
from jaxadv.attacks.momentum import *  # noqa: F403
from jaxadv.attacks.sparse_rs import *  # noqa: F403
from jaxadv.attacks.square import *  # noqa: F403
from jaxadv.attacks.transfer import *  # noqa: F403
from jaxadv.callables import *  # noqa: F403
from jaxadv.success import *  # noqa: F403

__version__ = "0.1.0"

__all__ = [
    "EvaluationResult",
    "Problem",
    "as_onehot",
    "bim",
    "certify",
    "compose",
    "config",
    "checked",
    "clip_to_bounds",
    "cross_entropy",
    "cw_margin",
    "eot_pgd",
    "evaluate",
    "example_keys",
    "evaluation",
    "fgsm",
    "from_apply",
    "from_flax",
    "from_nnx",
    "iterate",
    "keys",
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
    "row_sum",
    "sharding",
    "steepest_direction",
    "training",
    "universal",
    "zoo",
]
for _module in (
    _apgd,
    _cw,
    _decision_based,
    _deepfool,
    _ead,
    _fab,
    _fmn,
    _jsma,
    _momentum,
    _sparse_rs,
    _blackbox,
    _gradient_free,
    _square,
    _callables,
    _success,
    _transfer,
):
    __all__ += _module.__all__
del _module
