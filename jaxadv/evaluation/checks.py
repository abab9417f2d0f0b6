"""Gradient-masking checks, in the spirit of Carlini et al. (2019) and AutoAttack.

A defence that hides its gradients rather than being robust fools gradient
attacks into reporting a high robust accuracy. These checks look for the
symptoms, each with a warning that names it:

* accuracy does not fall to about 0 at a very large eps (an attack allowed to
  move anywhere in the box should always succeed);
* a single-step attack is stronger than an iterative one;
* a black-box attack succeeds where the white-box attacks failed;
* the model gives different outputs for the same input (randomness: evaluate
  with expectation over transformation instead).

A check that cannot run on the given inputs is skipped with a warning that
says so (the black-box check needs Square, which needs image-shaped inputs):
a skipped check is no evidence either way.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

from jaxadv.attacks.iterative import bim, pgd
from jaxadv.attacks.single_step import fgsm
from jaxadv.attacks.square import square
from jaxadv.models import logits as model_logits
from jaxadv.models import predict
from jaxadv.typing import Bounds, LogitsFn, Norm, PRNGKey


class MaskingReport(NamedTuple):
    warnings: list[str]
    figures: dict[str, Any]


def large_eps(norm: Norm, x: Any, lo: np.ndarray, hi: np.ndarray) -> float:
    """A radius that covers the whole box ``[lo, hi]`` around any point of ``x``
    ``[n, ...]``: the box's widest span in L-inf, that span times the L2 or L1 norm
    of a vector of ones."""
    span = float(np.max(np.broadcast_to(hi - lo, x.shape[1:])))
    dim = int(np.prod(x.shape[1:]))
    return {"linf": span, "l2": span * float(np.sqrt(dim)), "l1": span * dim}[norm]


def _square_unsupported(norm: Norm, x: np.ndarray) -> str | None:
    """Why Square cannot run here, or ``None`` when it can."""
    if norm not in ("linf", "l2", "l1"):
        return f"Square supports norm='linf', 'l2' or 'l1', not {norm!r}"
    if x.ndim not in (3, 4):
        return f"Square needs image-shaped inputs [n, H, W(, C)], got shape {x.shape}"
    return None


def masking_checks(
    logits_fn: LogitsFn,
    x: Any,
    y: Any,
    *,
    eps: float,
    norm: Norm,
    key: PRNGKey,
    bounds: Bounds = (0.0, 1.0),
    suite_result: Any = None,
    black_box: list[bool] | None = None,
    tolerance: float = 0.02,
    large_eps_accuracy: float = 0.1,
) -> MaskingReport:
    """Run the gradient-masking checks on a batch ``x`` ``[n, ...]`` with labels ``y`` ``[n]``.

    Args:
      logits_fn, x, y, eps, norm, key, bounds: the model, a batch and the threat model.
      suite_result: an :class:`EvaluationResult` of a suite that ran on examples
        including ``x``; with ``black_box`` (one flag per attack of the suite)
        it tells whether black-box attacks succeeded where white-box ones failed.
      tolerance: accuracy gap (fraction) tolerated before warning.
      large_eps_accuracy: accuracy at a very large eps above which to warn.

    Returns:
      ``MaskingReport(warnings, figures)``. A check that does not apply (Square
      on flat inputs) is skipped with a warning and its reason in
      ``figures["black_box_skipped"]``.
    """
    for name, value in (("tolerance", tolerance), ("large_eps_accuracy", large_eps_accuracy)):
        if not 0.0 <= value <= 1.0:  # NaN fails the comparison too
            raise ValueError(f"{name} must be a fraction in [0, 1], got {value}")
    x = np.asarray(x)
    y = np.asarray(y)
    lo, hi = np.asarray(bounds[0], np.float32), np.asarray(bounds[1], np.float32)
    warnings: list[str] = []
    figures: dict[str, Any] = {}
    k1, k2 = jax.random.split(key)

    z1, z2 = np.asarray(model_logits(logits_fn, x)), np.asarray(model_logits(logits_fn, x))
    figures["randomness_max_logit_change"] = float(np.max(np.abs(z1 - z2)))
    if not np.array_equal(z1, z2):
        warnings.append(
            "the model is randomised (two calls on the same inputs differ): gradient attacks see a "
            "noisy objective; evaluate with expectation over transformation"
        )

    def acc(x_adv: Any) -> float:
        return float(np.mean(np.asarray(predict(logits_fn, x_adv)) == y))

    a_pgd: float | None = None
    try:
        big = large_eps(norm, x, lo, hi)
        a_big = acc(bim(logits_fn, x, y, eps=big, steps=50, norm=norm, bounds=bounds))
        figures["large_eps"] = big
        figures["accuracy_at_large_eps"] = a_big
        if a_big > large_eps_accuracy:
            warnings.append(
                f"accuracy stays at {a_big:.1%} under BIM-50 at a very large eps={big:g} (the whole box): "
                "an unbounded attack should reach ~0%; gradients look masked or obfuscated"
            )

        a_fgsm = acc(fgsm(logits_fn, x, y, eps=eps, norm=norm, bounds=bounds))
        a_pgd = acc(pgd(logits_fn, x, y, key=k1, eps=eps, steps=20, norm=norm, bounds=bounds))
        figures["accuracy_single_step"] = a_fgsm
        figures["accuracy_iterative"] = a_pgd
        if a_fgsm < a_pgd - tolerance:
            warnings.append(
                f"the single-step attack (FGSM, {a_fgsm:.1%}) is stronger than the iterative one "
                f"(PGD-20, {a_pgd:.1%}): a sign of gradient masking"
            )

    except Exception as e:  # a model without gradients (e.g. jaxadv.from_callable)
        figures["white_box_error"] = f"{type(e).__name__}: {e}"
        warnings.append(
            f"gradient attacks could not run on this model ({type(e).__name__}); white-box checks skipped"
        )

    if suite_result is not None and black_box is not None and any(black_box):
        if not all(black_box):
            wins = sum(int(np.sum(suite_result.fooled_by == i)) for i, bb in enumerate(black_box) if bb)
            frac = wins / max(suite_result.num_examples, 1)
            figures["black_box_only_successes"] = frac
            if frac > tolerance:
                warnings.append(
                    f"black-box attacks fooled {frac:.1%} of the examples on which every white-box "
                    "attack failed: white-box gradients look masked"
                )
    elif (reason := _square_unsupported(norm, x)) is not None:
        figures["black_box_skipped"] = reason
        warnings.append(f"black-box check skipped: {reason}; it is no evidence for or against masking")
    else:
        sq = square(logits_fn, x, y, key=k2, eps=eps, queries=300, norm=norm, bounds=bounds)
        a_sq = acc(sq)
        figures["accuracy_black_box"] = a_sq
        if a_pgd is not None and a_sq < a_pgd - tolerance:
            warnings.append(
                f"a black-box attack (Square, 300 queries, {a_sq:.1%}) is stronger than white-box "
                f"PGD-20 ({a_pgd:.1%}): white-box gradients look masked"
            )
    return MaskingReport(warnings, figures)
