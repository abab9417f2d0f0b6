"""Robustness evaluation: attack suites, per-example worst case, sweeps, checks, plots."""

from jaxadv.evaluation.certified import (
    Certification,
    CertifiedResult,
    bound_propagation,
    certified_accuracy,
    smoothing,
)
from jaxadv.evaluation.checkpoint import CheckpointError
from jaxadv.evaluation.diagnostics import Indicators, MaskingReport, indicators, masking_checks
from jaxadv.evaluation.evaluate import evaluate
from jaxadv.evaluation.kernel import BatchResult, evaluate_batch
from jaxadv.evaluation.plots import plot_accuracy_vs_eps, plot_certified_accuracy, plot_examples
from jaxadv.evaluation.result import MISCLASSIFIED, ROBUST, EvaluationResult
from jaxadv.evaluation.suites import ATTACKS, SUITES, SuiteAttack, resolve_suite
from jaxadv.evaluation.sweeps import accuracy_curve, accuracy_vs_eps, minimal_eps
from jaxadv.evaluation.tally import Tally, TallyState, tally

__all__ = [
    "ATTACKS",
    "BatchResult",
    "MISCLASSIFIED",
    "ROBUST",
    "SUITES",
    "Certification",
    "CertifiedResult",
    "CheckpointError",
    "EvaluationResult",
    "Indicators",
    "MaskingReport",
    "SuiteAttack",
    "Tally",
    "TallyState",
    "accuracy_curve",
    "accuracy_vs_eps",
    "bound_propagation",
    "certified_accuracy",
    "evaluate",
    "evaluate_batch",
    "indicators",
    "masking_checks",
    "minimal_eps",
    "plot_accuracy_vs_eps",
    "plot_certified_accuracy",
    "plot_examples",
    "resolve_suite",
    "smoothing",
    "tally",
]
