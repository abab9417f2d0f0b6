"""jaxadv: adversarial examples for JAX models, as pure, compiled functions.

The public API is this flat namespace: the attacks, the model adapters, the
results, the losses an attack takes, :func:`evaluate`, and the subpackages.
Implementation lives in the modules named in each import below; the building
blocks (norms and projections in :mod:`jaxadv.threat_models`, the problem of
an attack in :mod:`jaxadv.attacks.base`, the loop in :mod:`jaxadv.engine`, ...)
are imported from their modules.
"""

from jaxadv.attacks.apgd import apgd, apgd_targeted
from jaxadv.attacks.cw import cw_l2
from jaxadv.attacks.decision_based import hop_skip_jump
from jaxadv.attacks.deepfool import deepfool
from jaxadv.attacks.ead import ead
from jaxadv.attacks.fab import fab, fab_targeted
from jaxadv.attacks.fmn import fmn
from jaxadv.attacks.gradient_free import nes, spsa
from jaxadv.attacks.iterative import bim, eot_pgd, pgd
from jaxadv.attacks.jsma import jsma
from jaxadv.attacks.momentum import mifgsm, nifgsm
from jaxadv.attacks.momentum_smoothed import tifgsm, vmifgsm
from jaxadv.attacks.single_step import fgsm
from jaxadv.attacks.sparse_rs import sparse_rs
from jaxadv.attacks.square import square
from jaxadv.attacks.transfer import TransferResult, ensemble_logits, transfer
from jaxadv.bpda import bpda
from jaxadv.callables import CallableError, GradientNotAvailableError, from_callable
from jaxadv.evaluation import EvaluationResult, evaluate
from jaxadv.keys import example_keys
from jaxadv.losses import cross_entropy, cw_margin, dlr, dlr_targeted
from jaxadv.models import from_apply, from_flax, from_nnx, logits, predict
from jaxadv.success import AttackResult, is_adversarial, with_success
from jaxadv.targets import least_likely, random_targets
from jaxadv.threat_models import norm_of
from jaxadv.validation import checked

# isort: split
# The public home of the building blocks prepare and Problem (jaxadv.attacks.base.prepare).
import jaxadv.attacks.base  # noqa: E402, F401
from jaxadv import certify, compose, config, evaluation, keys, sharding, training, universal, zoo

__version__ = "0.1.0"

__all__ = [
    # attacks
    "apgd",
    "apgd_targeted",
    "bim",
    "cw_l2",
    "deepfool",
    "ead",
    "eot_pgd",
    "fab",
    "fab_targeted",
    "fgsm",
    "fmn",
    "hop_skip_jump",
    "jsma",
    "mifgsm",
    "nes",
    "nifgsm",
    "pgd",
    "sparse_rs",
    "spsa",
    "square",
    "tifgsm",
    "vmifgsm",
    "transfer",
    "ensemble_logits",
    # model adapters
    "from_apply",
    "bpda",
    "from_callable",
    "from_flax",
    "from_nnx",
    "logits",
    "predict",
    "CallableError",
    "GradientNotAvailableError",
    # results and success
    "AttackResult",
    "EvaluationResult",
    "TransferResult",
    "evaluate",
    "is_adversarial",
    "with_success",
    # losses, targets, keys, measuring
    "cross_entropy",
    "cw_margin",
    "dlr",
    "dlr_targeted",
    "least_likely",
    "random_targets",
    "example_keys",
    "norm_of",
    "checked",
    # subpackages
    "certify",
    "compose",
    "config",
    "evaluation",
    "keys",
    "sharding",
    "training",
    "universal",
    "zoo",
]
