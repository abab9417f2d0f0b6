r"""FAB, the fast adaptive boundary attack (Croce & Hein, ICML 2020), L-inf, L2 and L1.

FAB looks for the adversarial example of smallest :math:`\|\cdot\|_p` norm. At
the current iterate :math:`x_t` (clean input :math:`x_0`, label :math:`y`) it
linearises the classifier: for each class :math:`k \ne y`

.. math::
    f_k = z_k(x_t) - z_y(x_t),\qquad w_k = \nabla z_k(x_t) - \nabla z_y(x_t),

and picks the class whose linearised boundary is closest,
:math:`\hat k = \arg\min_k |f_k| / \|w_k\|_q` (:math:`q` the dual norm: 1 for
L-inf, 2 for L2, :math:`\infty` for L1; all gradients come from one batched
Jacobian). With :math:`H = \{z : f_{\hat k} + \langle w_{\hat k}, z - x_t\rangle = 0\}`
and :math:`P(u)` the exact projection of :math:`u` onto :math:`H \cap [lo, hi]`
in the norm :math:`p` (:func:`project_hyperplane_box`), let
:math:`d_1 = P(x_t) - x_t` and :math:`d_2 = P(x_0) - x_0`. The step is a convex
combination of a step from :math:`x_t` and a step from :math:`x_0`, both
overshooting by :math:`\eta`:

.. math::
    x_{t+1} = \mathrm{clip}_{[lo, hi]}\big((1 - \alpha)(x_t + \eta d_1) + \alpha (x_0 + \eta d_2)\big),
    \qquad \alpha = \min\Big(\frac{\|d_1\|_p}{\|d_1\|_p + \|d_2\|_p},\ \alpha_{max}\Big).

When :math:`x_{t+1}` is misclassified it is kept if it is the smallest
adversarial example so far, and the iterate moves back towards the clean
input: :math:`x_{t+1} \leftarrow x_0 + \beta (x_{t+1} - x_0)`. The first run
starts from :math:`x_0`; each further restart from a random point at distance
:math:`\rho/2` of :math:`x_0` (clipped into the box): the perturbation is a
uniform draw of :math:`[-1, 1]^n` (L-inf) or a Gaussian draw (L2, L1) scaled
to norm :math:`\rho/2`, with :math:`\rho = \epsilon` when ``eps`` is given (as in
AutoAttack) and otherwise the smallest norm found so far, capped at
AutoAttack's default radius (0.3 for L-inf, 1 for L2, 5 for L1).

After the runs a binary search on the segment from :math:`x_0` to the smallest
adversarial example found keeps the point closest to :math:`x_0` that is still
misclassified (``search_steps`` halvings; AutoAttack's FAB has no such search,
the authors' first code had a three-step secant search there).

With ``eps=None`` the attack returns each example's smallest adversarial
example (``x`` where none was found). With ``eps`` it returns the adversarial
example only where its norm is at most ``eps`` (``x`` otherwise), which is what
AutoAttack's FAB counts as a success at ``eps``; an example is then left alone
by the later runs once one run has succeeded, as AutoAttack does. Examples
misclassified from the start are returned unchanged.
"""

from __future__ import annotations

from typing import Literal, overload

import jax.numpy as jnp

from jaxadv._core.problem import prepare

# project_hyperplane_box, a building block, stays importable from this module (F401).
from jaxadv.attacks.fab_loop import _check_common, _class_order, _run_fab, project_hyperplane_box  # noqa: F401
from jaxadv.success import AttackResult
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, LoopMode, Norm, PRNGKey
from jaxadv.validation import check_steps, check_target_classes

__all__ = ["fab", "fab_targeted"]  # project_hyperplane_box: a building block, used from this module


#: AutoAttack's radius of the random restarts when no eps is given (``DEFAULT_EPS_DICT_BY_NORM``).
@overload
def fab(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike | None = None,
    steps: int = 100,
    norm: Norm = "linf",
    num_restarts: int = 1,
    alpha_max: ArrayLike = 0.1,
    eta: ArrayLike = 1.05,
    backward_factor: ArrayLike = 0.9,
    search_steps: int = 10,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
    return_info: Literal[False] = False,
) -> Array: ...


@overload
def fab(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike | None = None,
    steps: int = 100,
    norm: Norm = "linf",
    num_restarts: int = 1,
    alpha_max: ArrayLike = 0.1,
    eta: ArrayLike = 1.05,
    backward_factor: ArrayLike = 0.9,
    search_steps: int = 10,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
    return_info: Literal[True],
) -> AttackResult: ...


@overload
def fab(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike | None = None,
    steps: int = 100,
    norm: Norm = "linf",
    num_restarts: int = 1,
    alpha_max: ArrayLike = 0.1,
    eta: ArrayLike = 1.05,
    backward_factor: ArrayLike = 0.9,
    search_steps: int = 10,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult: ...


def fab(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike | None = None,
    steps: int = 100,
    norm: Norm = "linf",
    num_restarts: int = 1,
    alpha_max: ArrayLike = 0.1,
    eta: ArrayLike = 1.05,
    backward_factor: ArrayLike = 0.9,
    search_steps: int = 10,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult:
    r"""FAB (Croce & Hein, 2020), untargeted: minimal L-inf, L2 or L1 adversarial examples.

    Runs the iteration of the module docstring ``num_restarts`` times (the first
    from ``x``, the others from random points) for ``steps`` steps each, keeping
    per example the adversarial example of smallest norm, then shortens it with
    ``search_steps`` halvings of the segment from ``x``. Each step costs one
    Jacobian of the ``C`` logit differences :math:`z_k - z_y` (``C`` backward
    passes, batched) and one forward pass.

    Args:
      logits_fn: model ``x -> logits [batch, C]``.
      x: ``[batch, ...]`` clean inputs inside ``bounds``.
      y: ``[batch]`` integer labels or ``[batch, C]`` one-hot; ``None``: the model's predictions.
      key: PRNG key of the random restarts: one key, or a ``[batch]`` array of
        keys, one per example (:mod:`jaxadv.keys`).
      eps: ``None`` (minimal-norm mode: every adversarial example found counts),
        or a radius, scalar or ``[batch]`` (traced): only adversarial examples of
        norm at most ``eps`` are returned (AutoAttack's success at ``eps``), and
        the restarts start at distance ``eps / 2``.
      steps: iterations per run (static).
      norm: ``"linf"``, ``"l2"`` or ``"l1"`` (static).
      num_restarts: runs (static); the first starts from ``x``.
      alpha_max: largest weight :math:`\alpha_{max} \in [0, 1]` of the step from ``x``
        (scalar or ``[batch]``, traced).
      eta: overshoot :math:`\eta \ge 0` of the projection steps (traced).
      backward_factor: :math:`\beta \in [0, 1]`, the backward factor after an adversarial iterate (traced).
      search_steps: halvings of the final search (static; 0: no search).
      bounds: ``(lo, hi)``, scalars or arrays broadcasting against ``x``.
      loop: ``"auto"``, ``"fori"``, ``"compiled"`` or ``"host"`` (see :mod:`jaxadv.engine`).
      return_info: return an :class:`jaxadv.AttackResult` ``(x_adv, success, None)``
        instead of the array.

    Returns:
      ``[batch, ...]``, shape and dtype of ``x``: per example the smallest
      adversarial example found (within ``eps`` when given), ``x`` where there is
      none or where ``x`` is already misclassified.
    """
    norm, steps = _check_common(norm, steps, num_restarts, search_steps, key)
    p = prepare(logits_fn, x, y, bounds=bounds, eps=eps)
    if p.empty:
        return p.output(p.finalize(p.x), targeted=False, return_info=return_info)
    classes = jnp.broadcast_to(jnp.arange(p.num_classes, dtype=jnp.int32), (p.x.shape[0], p.num_classes))
    x_adv, _ = _run_fab(
        p,
        key,
        [classes],
        eps_mode=eps is not None,
        steps=steps,
        norm=norm,
        num_restarts=num_restarts,
        alpha_max=alpha_max,
        eta=eta,
        beta=backward_factor,
        search_steps=search_steps,
        loop=loop,
    )
    return p.output(p.finalize(x_adv), targeted=False, return_info=return_info)


@overload
def fab_targeted(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike | None = None,
    steps: int = 100,
    norm: Norm = "linf",
    num_target_classes: int = 9,
    num_restarts: int = 1,
    alpha_max: ArrayLike = 0.1,
    eta: ArrayLike = 1.05,
    backward_factor: ArrayLike = 0.9,
    search_steps: int = 10,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
    return_info: Literal[False] = False,
) -> Array: ...


@overload
def fab_targeted(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike | None = None,
    steps: int = 100,
    norm: Norm = "linf",
    num_target_classes: int = 9,
    num_restarts: int = 1,
    alpha_max: ArrayLike = 0.1,
    eta: ArrayLike = 1.05,
    backward_factor: ArrayLike = 0.9,
    search_steps: int = 10,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
    return_info: Literal[True],
) -> AttackResult: ...


@overload
def fab_targeted(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike | None = None,
    steps: int = 100,
    norm: Norm = "linf",
    num_target_classes: int = 9,
    num_restarts: int = 1,
    alpha_max: ArrayLike = 0.1,
    eta: ArrayLike = 1.05,
    backward_factor: ArrayLike = 0.9,
    search_steps: int = 10,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult: ...


def fab_targeted(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike | None = None,
    steps: int = 100,
    norm: Norm = "linf",
    num_target_classes: int = 9,
    num_restarts: int = 1,
    alpha_max: ArrayLike = 0.1,
    eta: ArrayLike = 1.05,
    backward_factor: ArrayLike = 0.9,
    search_steps: int = 10,
    bounds: Bounds = (0.0, 1.0),
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult:
    r"""FAB-T (Croce & Hein, 2020; AutoAttack's targeted FAB): FAB along chosen boundaries.

    For :math:`k = 2, \dots, n_{target} + 1` the target :math:`t` of each example
    is its :math:`k`-th highest clean logit, and FAB (``num_restarts`` runs)
    linearises only the boundary between :math:`y` and :math:`t`
    (:math:`f = z_t - z_y`, one gradient per step instead of ``C``). As in
    AutoAttack and :func:`jaxadv.apgd_targeted`, the goal is untargeted: any
    prediction other than ``y`` counts, and per example the smallest
    adversarial example over all targets and runs is kept (with ``eps``, the
    first run that finds one within ``eps`` settles the example).

    Args:
      logits_fn, x, key, eps, steps, norm: as in :func:`fab`.
      alpha_max, eta, backward_factor, search_steps, bounds, loop: as in :func:`fab`.
      y: ``[batch]`` integer labels or ``[batch, C]`` one-hot; ``None``: the model's predictions.
      num_target_classes: target classes tried (static; at most ``C - 1``).
      num_restarts: runs per target class (static).
      return_info: return an :class:`jaxadv.AttackResult` ``(x_adv, success, None)``
        (success: the prediction differs from ``y``).

    Returns:
      The adversarial batch, shape and dtype of ``x`` (see :func:`fab`).
    """
    norm, steps = _check_common(norm, steps, num_restarts, search_steps, key)
    num_target_classes = check_steps(num_target_classes, "num_target_classes")
    p = prepare(logits_fn, x, y, bounds=bounds, eps=eps)
    check_target_classes(num_target_classes, p.num_classes)
    if p.empty:
        return p.output(p.finalize(p.x), targeted=False, return_info=return_info)
    order = _class_order(p.params, p.x, model=p.model)
    targets = [order[:, k - 1 : k] for k in range(2, num_target_classes + 2)]
    x_adv, _ = _run_fab(
        p,
        key,
        targets,
        eps_mode=eps is not None,
        steps=steps,
        norm=norm,
        num_restarts=num_restarts,
        alpha_max=alpha_max,
        eta=eta,
        beta=backward_factor,
        search_steps=search_steps,
        loop=loop,
    )
    return p.output(p.finalize(x_adv), targeted=False, return_info=return_info)
