"""Certified robustness: lower bounds on robustness, where attacks give upper bounds.

* Randomized smoothing (:func:`smooth_predict`, :func:`smooth_certify`): a
  probabilistic L2 certificate for the Gaussian-smoothed classifier.
* Bound propagation (:func:`ibp_bounds`, :func:`crown_bounds`,
  :func:`margin_bounds`, :func:`verified`): deterministic bounds on the logits of
  the model itself over an L-inf, L2 or L1 ball intersected with the input box.
"""

from jaxadv.certify.binomial import clopper_pearson_lower, two_sided_binomial_pvalue
from jaxadv.certify.crown import crown_bounds
from jaxadv.certify.intervals import IntervalBounds, ibp_bounds
from jaxadv.certify.margins import margin_bounds, verified
from jaxadv.certify.smoothing import SmoothedCertificate, smooth_certify, smooth_predict

__all__ = [
    "IntervalBounds",
    "SmoothedCertificate",
    "clopper_pearson_lower",
    "crown_bounds",
    "ibp_bounds",
    "margin_bounds",
    "smooth_certify",
    "smooth_predict",
    "two_sided_binomial_pvalue",
    "verified",
]
