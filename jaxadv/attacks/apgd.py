r"""Auto-PGD (Croce & Hein, 2020, 2021): step-size-free PGD with restarts, for L-inf, L2 and L1.

**L-inf and L2** (Croce & Hein, 2020). APGD runs projected steepest ascent
with a momentum term and halves its step size at checkpoints when progress
stalls, restarting from the best point found:

.. math::
    z^{(k+1)} &= \Pi_S\big(x^{(k)} + \eta^{(k)} d_p(\nabla f(x^{(k)}))\big) \\
    x^{(k+1)} &= \Pi_S\big(x^{(k)} + \alpha (z^{(k+1)} - x^{(k)})
                 + (1 - \alpha)(x^{(k)} - x^{(k-1)})\big)

with :math:`S = B_\epsilon(x) \cap [lo, hi]`, :math:`\alpha = 1` for the first
step and :math:`0.75` afterwards, :math:`\eta^{(0)} = 2\epsilon`, and
:math:`d_p` the steepest-ascent direction of the norm
(:func:`jaxadv.threat_models.steepest_direction`; projections are
:func:`jaxadv.threat_models.project_to_feasible`).

Checkpoints :math:`w_j = \lceil p_j N \rceil` with :math:`p_0 = 0`,
:math:`p_1 = 0.22` and :math:`p_{j+1} = p_j + \max(p_j - p_{j-1} - 0.03, 0.06)`
(as in the authors' code: windows of ``int(0.22 N)`` steps, shrinking by
``int(0.03 N)`` down to ``int(0.06 N)``, each at least 1). At a checkpoint the
step size of an example is halved, and its iterate and gradient reset to the
best point seen, when

1. the loss increased in at most a fraction :math:`\rho = 0.75` of the steps
   since the last checkpoint (the authors' code tests ``<=``), or
2. the step size was not halved at the previous checkpoint and the best loss
   has not improved since then.

**L1** ("Mind the box", Croce & Hein, 2021). The feasible set
:math:`S = B^1_\epsilon(x) \cap [lo, hi]` has sparse corners, and three things
change:

* the step is sparse: :math:`x^{(k+1)} = \Pi_S(x^{(k)} + \eta^{(k)} d)` with
  :math:`d_i = \mathrm{sign}(g_i) / |K|` on the set :math:`K` of coordinates
  whose :math:`|g_i|` reaches the :math:`(1 - \kappa)`-quantile of
  :math:`|g|` (the top :math:`\kappa` fraction) and 0 elsewhere; no momentum;
* :math:`\Pi_S` is the exact Euclidean projection onto the L1 ball
  intersected with the box (:func:`jaxadv.threat_models.project_l1_box`), not a projection onto the
  ball followed by clipping;
* :math:`\eta^{(0)} = \epsilon` and :math:`\kappa^{(0)} = 0.2`; every
  ``max(int(0.04 N), 1)`` steps, with :math:`s = \|x_{best} - x\|_0` the
  sparsity of the highest-loss point: :math:`\kappa = s / (1.5 n)` (steps as
  sparse as the best perturbation, :math:`n` coordinates); if :math:`s` fell
  below 0.95 times its value at the previous checkpoint the step size is reset
  to :math:`\epsilon` and the iterate and gradient to the best point,
  otherwise the step size is divided by 1.5; it stays in
  :math:`[\epsilon / 10, \epsilon]`.

With ``shrinking_eps`` (L1 only; AutoAttack's L1 configuration) the steps are
split 30%/30%/40% between the radii :math:`3\epsilon`, :math:`2\epsilon` and
:math:`\epsilon`; each stage starts from the previous stage's highest-loss
point projected onto its smaller set, with :math:`\kappa^{(0)}` and the
reference sparsity taken from that start. Only the last stage's points are
returned or count as adversarial.

**All norms.** The gradient comes from a gradient source of
:mod:`jaxadv.compose`: the exact gradient of the loss
(:class:`jaxadv.compose.LossGradient`), or with ``num_samples > 1``, a random
``transform`` or a randomised model, its mean over draws
(:class:`jaxadv.compose.EOT`). The highest loss point and every adversarial
iterate (:func:`jaxadv.success.hits`, on the iterate rounded to the caller's
dtype) are tracked per example; an example that has become adversarial is
frozen (its state no longer changes inside the compiled loop) when
``early_stop`` is on. A point where the model's logits (or the loss, or its
gradient) are not finite scores a loss of :math:`-\infty` and is never
adversarial; it sends its example back to :math:`x` for the next step, as in
every composed attack. Examples whose clean logits are not finite are returned
unchanged.

**A configuration of** :mod:`jaxadv.compose`. One run is a
:class:`jaxadv.compose.Attack` (``jaxadv.attacks.apgd_loop.configuration``):
:class:`~jaxadv.compose.HeavyBall` with
:class:`~jaxadv.compose.CheckpointHalving` (L-inf, L2), or
:class:`~jaxadv.compose.SparseSteepest` with
:class:`~jaxadv.compose.SparsityCheckpoints` (L1), a random start and the
books of the best iterates; restarts and target classes merge the runs'
outcomes with :func:`jaxadv.compose.merge`, as :func:`jaxadv.compose.restarts`
does.
"""

from __future__ import annotations

from typing import Callable, Literal, overload

import jax
import jax.numpy as jnp

from jaxadv._core.problem import check_finite_step
from jaxadv._core.randomised import loop_problem, prepare_problem
from jaxadv._core.rows import select_rows
from jaxadv.attacks.apgd_loop import _check_common, _run
from jaxadv.compose.bookkeeping import no_outcome
from jaxadv.compose.restarts import clean_not_finite, settled
from jaxadv.keys import fold_rows, row_keys
from jaxadv.losses import dlr, dlr_targeted, finite_rows, get_loss
from jaxadv.models import combine_model
from jaxadv.success import AttackResult
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, LoopMode, LossFn, Norm, PRNGKey
from jaxadv.validation import check_steps, check_target_classes, check_trace

__all__ = ["apgd", "apgd_targeted", "dlr", "dlr_targeted"]


@overload
def apgd(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    steps: int = 100,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "ce",
    num_restarts: int = 1,
    rho: float = 0.75,
    num_samples: int = 1,
    transform: Callable[[PRNGKey, Array], Array] | None = None,
    randomized: bool = False,
    shrinking_eps: bool = False,
    early_stop: bool = False,
    loop: LoopMode = "auto",
    return_info: Literal[False] = False,
    trace: bool = False,
) -> Array: ...


@overload
def apgd(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    steps: int = 100,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "ce",
    num_restarts: int = 1,
    rho: float = 0.75,
    num_samples: int = 1,
    transform: Callable[[PRNGKey, Array], Array] | None = None,
    randomized: bool = False,
    shrinking_eps: bool = False,
    early_stop: bool = False,
    loop: LoopMode = "auto",
    return_info: Literal[True],
    trace: bool = False,
) -> AttackResult: ...


@overload
def apgd(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    steps: int = 100,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "ce",
    num_restarts: int = 1,
    rho: float = 0.75,
    num_samples: int = 1,
    transform: Callable[[PRNGKey, Array], Array] | None = None,
    randomized: bool = False,
    shrinking_eps: bool = False,
    early_stop: bool = False,
    loop: LoopMode = "auto",
    return_info: bool = False,
    trace: bool = False,
) -> Array | AttackResult: ...


def apgd(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    steps: int = 100,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "ce",
    num_restarts: int = 1,
    rho: float = 0.75,
    num_samples: int = 1,
    transform: Callable[[PRNGKey, Array], Array] | None = None,
    randomized: bool = False,
    shrinking_eps: bool = False,
    early_stop: bool = False,
    loop: LoopMode = "auto",
    return_info: bool = False,
    trace: bool = False,
) -> Array | AttackResult:
    r"""Auto-PGD (Croce & Hein, 2020, 2021): APGD-CE and APGD-DLR, in L-inf, L2 and L1.

    Runs the algorithm of the module docstring ``num_restarts`` times from random
    points of the feasible set (each restart only matters for examples not yet
    fooled), ascending cross-entropy (``loss="ce"``) or the DLR loss
    (``loss="dlr"``, :func:`jaxadv.dlr`; any ``(logits, onehot) -> [batch]``
    callable works too). With ``targeted=True``, ``y`` holds target classes and
    APGD descends the loss of the target (an example succeeds when the model
    predicts it); the DLR loss has no targeted form here: use
    :func:`apgd_targeted` (APGD-T) for that.

    Randomness in the model or its input is attacked with expectation over
    transformation: each gradient is the mean over ``num_samples`` draws
    (:class:`jaxadv.compose.EOT`), each with its own key, reaching a randomised
    model ``logits_fn(x, key)`` (``randomized=True``) and an input
    ``transform(key, x)``. AutoAttack's version for randomised defences
    ("rand") runs APGD-CE and APGD-DLR with 20 draws. Success inside the loop
    is tested on one further draw of the model at each iterate, and the
    returned ``success`` (``return_info``) on the model with fixed keys, one per
    example. The model and ``transform`` are called one example at a time
    (``jax.vmap``), each with a key of that example.

    Args:
      logits_fn: model ``x -> logits [batch, C]``, or ``(x, key) -> logits``
        with ``randomized=True``.
      x: ``[batch, ...]`` clean inputs inside ``bounds``.
      y: ``[batch]`` labels or ``[batch, C]`` one-hot (targets when
        ``targeted``); ``None``: the model's predictions.
      key: PRNG key for the random starting points and the draws: one key, or a
        ``[batch]`` array of keys, one per example (:mod:`jaxadv.keys`; each
        example draws only from its own key).
      eps: radius, scalar or ``[batch]`` (traced).
      steps: iterations per restart :math:`N` (static).
      norm: ``"linf"``, ``"l2"`` or ``"l1"``.
      targeted: descend the loss of the target classes ``y`` (``loss="ce"`` or a
        callable).
      bounds: ``(lo, hi)``, scalars or arrays broadcasting against ``x``.
      loss: ``"ce"``, ``"dlr"``, another name or a callable
        (:func:`jaxadv.losses.get_loss`; static).
      num_restarts: number of random restarts (static).
      rho: the fraction of condition 1 (static; L-inf and L2).
      num_samples: gradient draws per step (static); each step costs that many
        forward-backward passes.
      transform: optional random input transformation ``(key, x) -> x``
        (static callable), applied before the model in each draw.
      randomized: the model takes a key (see above).
      shrinking_eps: with ``norm="l1"``, run 30%/30%/40% of the steps at
        :math:`3\epsilon`, :math:`2\epsilon`, :math:`\epsilon` (AutoAttack's L1
        configuration; ``steps >= 3``).
      early_stop: freeze an example once it is adversarial (its returned example
        is then the first adversarial iterate; off, the last one). Off by
        default, as in every attack of the library: which examples succeed does
        not depend on it (a success is kept either way), and for a randomised
        model one draw's success is no reason to stop improving.
      loop: ``"auto"``, ``"fori"``, ``"compiled"`` or ``"host"`` (see :mod:`jaxadv.engine`).
      return_info: return an :class:`jaxadv.AttackResult` ``(x_adv, success,
        None)`` instead of the array.
      trace: with ``return_info``, keep each run's per-example trace, merged
        over restarts (``AttackResult.trace``, a :class:`jaxadv.compose.TraceFlags`);
        with ``shrinking_eps``, of the last stage's runs (at ``eps``).

    Returns:
      The adversarial batch, shape and dtype of ``x``: for each example an
      adversarial iterate when one was found, otherwise the highest-loss point
      (with ``return_info``, an :class:`jaxadv.AttackResult`).
    """
    norm, steps = _check_common(norm, rho, num_restarts, key, num_samples, shrinking_eps, steps)
    check_trace(trace, return_info)
    loss_fn = get_loss(loss)
    if targeted and loss_fn is dlr:
        raise ValueError(
            "loss='dlr' has no targeted form in apgd: use jaxadv.apgd_targeted (APGD-T, the targeted "
            "DLR loss over the top classes), or loss='ce' with targeted=True"
        )
    p = prepare_problem(
        logits_fn, x, y, key=key, randomized=randomized, bounds=bounds, targeted=targeted, eps=eps
    )
    if loss_fn is dlr and p.num_classes < 3:
        raise ValueError(
            f"loss='dlr' needs at least 3 classes (it divides by z_1 - z_3), got {p.num_classes}; "
            "use loss='ce'"
        )
    check_finite_step(p.eps, p.lo, p.hi, "eps")
    if p.empty:
        return p.output(p.finalize(p.x), targeted=targeted, return_info=return_info)
    key = row_keys(key, p.x.shape[0])
    clean_bad = clean_not_finite(p.params, p.x, model=p.model)
    loss_labels = p.labels if p.labels.ndim == 2 else jax.nn.one_hot(p.labels, p.num_classes)
    q = loop_problem(p, randomized)
    out = no_outcome(p.x)
    for r in range(num_restarts):
        out = _run(
            q,
            fold_rows(key, r),
            loss_labels,
            loss_fn,
            out,
            steps=steps,
            norm=norm,
            rho=rho,
            early_stop=early_stop,
            loop=loop,
            targeted=targeted,
            eot_samples=num_samples,
            transform=transform,
            randomized=randomized,
            shrinking_eps=shrinking_eps,
            trace=trace,
        )
        if settled(out, clean_bad):
            break
    x_adv = p.finalize(select_rows(clean_bad, p.x, out.x))
    return p.output(x_adv, targeted=targeted, return_info=return_info, trace=out.flags)


@overload
def apgd_targeted(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    steps: int = 100,
    norm: Norm = "linf",
    bounds: Bounds = (0.0, 1.0),
    num_target_classes: int = 9,
    num_restarts: int = 1,
    rho: float = 0.75,
    num_samples: int = 1,
    transform: Callable[[PRNGKey, Array], Array] | None = None,
    randomized: bool = False,
    shrinking_eps: bool = False,
    early_stop: bool = False,
    loop: LoopMode = "auto",
    return_info: Literal[False] = False,
    trace: bool = False,
) -> Array: ...


@overload
def apgd_targeted(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    steps: int = 100,
    norm: Norm = "linf",
    bounds: Bounds = (0.0, 1.0),
    num_target_classes: int = 9,
    num_restarts: int = 1,
    rho: float = 0.75,
    num_samples: int = 1,
    transform: Callable[[PRNGKey, Array], Array] | None = None,
    randomized: bool = False,
    shrinking_eps: bool = False,
    early_stop: bool = False,
    loop: LoopMode = "auto",
    return_info: Literal[True],
    trace: bool = False,
) -> AttackResult: ...


@overload
def apgd_targeted(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    steps: int = 100,
    norm: Norm = "linf",
    bounds: Bounds = (0.0, 1.0),
    num_target_classes: int = 9,
    num_restarts: int = 1,
    rho: float = 0.75,
    num_samples: int = 1,
    transform: Callable[[PRNGKey, Array], Array] | None = None,
    randomized: bool = False,
    shrinking_eps: bool = False,
    early_stop: bool = False,
    loop: LoopMode = "auto",
    return_info: bool = False,
    trace: bool = False,
) -> Array | AttackResult: ...


def apgd_targeted(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    steps: int = 100,
    norm: Norm = "linf",
    bounds: Bounds = (0.0, 1.0),
    num_target_classes: int = 9,
    num_restarts: int = 1,
    rho: float = 0.75,
    num_samples: int = 1,
    transform: Callable[[PRNGKey, Array], Array] | None = None,
    randomized: bool = False,
    shrinking_eps: bool = False,
    early_stop: bool = False,
    loop: LoopMode = "auto",
    return_info: bool = False,
    trace: bool = False,
) -> Array | AttackResult:
    r"""APGD-T (Croce & Hein, 2020): APGD on the targeted DLR loss over the top classes.

    For :math:`k = 2, \dots, n_{target}+1` the target :math:`t` of each example is
    its :math:`k`-th highest clean logit, and APGD (``num_restarts`` random starts
    each) ascends :func:`jaxadv.dlr_targeted`. The goal is untargeted: an example
    counts as fooled as soon as any run makes the model predict a class other
    than ``y``; later runs only matter for examples not yet fooled (and are
    skipped altogether when every example already is, outside ``jit``).

    Args:
      logits_fn, x, key, eps, steps, norm, bounds, rho: as in :func:`apgd`.
      num_samples, transform, randomized, shrinking_eps, early_stop, loop: as in :func:`apgd`.
      y: ``[batch]`` integer labels or ``[batch, C]`` one-hot.
      num_target_classes: number of target classes tried (static; at most ``C - 1``).
      num_restarts: random restarts per target class (static).
      return_info: return an :class:`jaxadv.AttackResult` ``(x_adv, success,
        None)`` (success: the prediction differs from ``y``).
      trace: with ``return_info``, the runs' per-example trace merged over
        target classes and restarts (``AttackResult.trace``; see :func:`apgd`).

    Returns:
      The adversarial batch, shape and dtype of ``x`` (see :func:`apgd`).
    """
    norm, steps = _check_common(norm, rho, num_restarts, key, num_samples, shrinking_eps, steps)
    check_trace(trace, return_info)
    num_target_classes = check_steps(num_target_classes, "num_target_classes")
    p = prepare_problem(
        logits_fn, x, y, key=key, randomized=randomized, bounds=bounds, targeted=False, eps=eps
    )
    if p.num_classes < 4:
        raise ValueError(f"apgd_targeted needs at least 4 classes, got {p.num_classes}")
    check_target_classes(num_target_classes, p.num_classes)
    check_finite_step(p.eps, p.lo, p.hi, "eps")
    if p.empty:
        return p.output(p.finalize(p.x), targeted=False, return_info=return_info)
    key = row_keys(key, p.x.shape[0])
    clean_logits = combine_model(p.model, p.params)(p.x)
    clean_bad = ~finite_rows(clean_logits)
    clean_order = jnp.argsort(clean_logits, axis=-1)
    onehot_y = jax.nn.one_hot(p.labels, p.num_classes)
    q = loop_problem(p, randomized)
    out = no_outcome(p.x)
    for k in range(2, num_target_classes + 2):
        target = clean_order[:, -k]
        signed = onehot_y - jax.nn.one_hot(target, p.num_classes)
        for r in range(num_restarts):
            out = _run(
                q,
                fold_rows(key, k * num_restarts + r),
                signed,
                dlr_targeted,
                out,
                steps=steps,
                norm=norm,
                rho=rho,
                early_stop=early_stop,
                loop=loop,
                eot_samples=num_samples,
                transform=transform,
                randomized=randomized,
                shrinking_eps=shrinking_eps,
                trace=trace,
            )
        if settled(out, clean_bad):
            break
    x_adv = p.finalize(select_rows(clean_bad, p.x, out.x))
    return p.output(x_adv, targeted=False, return_info=return_info, trace=out.flags)
