r"""Gradient-free PGD: projected steps along a gradient *estimated* from scores.

:func:`spsa` (Uesato et al., 2018) and :func:`nes` (Ilyas et al., 2018) take
PGD steps along the finite-difference estimate of
:class:`jaxadv.compose.FiniteDifference` (Rademacher and Gaussian probes), and
count their queries under the rules of :mod:`jaxadv.attacks.blackbox`. Each
is a named configuration of the composed loop::

    compose.Attack(FiniteDifference(...), compose.steepest(), norm=norm, count_queries=True)

run by :func:`jaxadv.compose.loop.run_with_queries`: an example stops spending
queries once it succeeds.
"""

from __future__ import annotations

from typing import Any, Literal, overload

from jaxadv._core.problem import check_step_size, prepare
from jaxadv.attacks.blackbox import check_finite_eps, check_key, check_queries, empty_result, finish
from jaxadv.callables import reraise_callable_errors
from jaxadv.compose.estimates import FiniteDifference
from jaxadv.compose.loop import Attack, run_with_queries
from jaxadv.compose.updates import Steepest
from jaxadv.losses import get_loss
from jaxadv.success import AttackResult
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, LoopMode, LossFn, Norm, PRNGKey
from jaxadv.validation import check_batch_array, check_finite, check_norm, check_steps

__all__ = ["nes", "spsa"]


def _estimated_pgd(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None,
    *,
    key: PRNGKey,
    eps: ArrayLike,
    queries: int,
    samples: int,
    fd_scale: ArrayLike,
    step_size: ArrayLike | None,
    norm: Norm,
    targeted: bool,
    bounds: Bounds,
    loss: str | LossFn,
    distribution: str,
    loop: LoopMode,
    return_info: bool,
) -> Any:
    norm = check_norm(norm)
    samples = check_steps(samples, "num_samples")
    queries = check_queries(queries, 2 * samples + 2)
    check_key(key)
    steps = (queries - 1) // (2 * samples + 1)
    p = prepare(logits_fn, x, y, bounds=bounds, targeted=targeted, eps=eps)
    alpha = check_step_size(p.eps / 4.0 if step_size is None else step_size, p.x)
    scale = check_batch_array(check_finite(fd_scale, "fd_scale", minimum=0.0, above=True), p.x, "fd_scale")
    check_finite_eps(p)
    if p.empty:
        return empty_result(p, return_info=return_info)
    source = FiniteDifference(get_loss(loss), samples, scale, distribution, p.lo, p.hi)
    attack = Attack(source, Steepest(), norm=norm, count_queries=True)
    with reraise_callable_errors():
        x_adv, spent = run_with_queries(
            attack, p, key=key, step_size=alpha, steps=steps, targeted=targeted, loop=loop
        )
        return finish(p, x_adv, spent, targeted=targeted, return_info=return_info)


@overload
def spsa(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    queries: int = 1000,
    num_samples: int = 16,
    fd_scale: ArrayLike | None = None,
    step_size: ArrayLike | None = None,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "cw",
    loop: LoopMode = "auto",
    return_info: Literal[False] = False,
) -> Array: ...


@overload
def spsa(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    queries: int = 1000,
    num_samples: int = 16,
    fd_scale: ArrayLike | None = None,
    step_size: ArrayLike | None = None,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "cw",
    loop: LoopMode = "auto",
    return_info: Literal[True],
) -> AttackResult: ...


@overload
def spsa(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    queries: int = 1000,
    num_samples: int = 16,
    fd_scale: ArrayLike | None = None,
    step_size: ArrayLike | None = None,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "cw",
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult: ...


def spsa(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    queries: int = 1000,
    num_samples: int = 16,
    fd_scale: ArrayLike | None = None,
    step_size: ArrayLike | None = None,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "cw",
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult:
    r"""Gradient-free PGD with the SPSA gradient estimate (Uesato et al., 2018).

    Each iteration draws ``num_samples`` Rademacher directions :math:`v_k \in \{\pm1\}^n`
    and estimates, with :math:`\delta` = ``fd_scale``,

    .. math::
        \hat g = \frac{1}{K}\sum_{k=1}^{K}
          \frac{L(x_t + \delta v_k) - L(x_t - \delta v_k)}{2\delta}\, v_k

    (:class:`jaxadv.compose.FiniteDifference`; the perturbed points clipped into
    ``bounds``), then takes the PGD step
    :math:`x_{t+1} = \Pi_{B_\epsilon(x)\cap[lo,hi]}(x_t + \alpha\, d_p(\hat g))`
    (:func:`jaxadv.threat_models.steepest_direction`, :func:`jaxadv.threat_models.project_to_feasible`).
    :math:`L` is ``loss`` (default ``"cw"``, the margin :func:`jaxadv.cw_margin`), ascended,
    or descended when ``targeted``. The model is only evaluated.

    Queries: 1 for the clean input, then ``2 * num_samples + 1`` per iteration (the
    estimate and the new iterate) until the example succeeds (the argmax test of
    :func:`jaxadv.is_adversarial`); ``(queries - 1) // (2 * num_samples + 1)``
    iterations run. See :mod:`jaxadv.attacks.blackbox` for the counting rules.

    Args:
      logits_fn: the model (evaluated only).
      x: ``[batch, ...]`` inputs inside ``bounds``.
      y: labels (targets when ``targeted``); ``None``: the model's predictions.
      key: PRNG key.
      eps: radius, scalar or ``[batch]`` (traced).
      queries: per-example budget (static, at least ``2 * num_samples + 2``).
      num_samples: antithetic pairs per estimate (static).
      fd_scale: the finite-difference scale :math:`\delta`, scalar or ``[batch]``
        (traced); default 0.01.
      step_size: :math:`\alpha` (traced), default ``eps / 4``.
      norm: ``"linf"``, ``"l2"`` or ``"l1"``.
      targeted, bounds, loss, loop: as in :func:`jaxadv.pgd`.
      return_info: return an :class:`jaxadv.AttackResult` ``(x_adv, success, queries)``
        instead of the array: ``success`` re-predicted on ``x_adv``, ``queries``
        ``[batch]`` int32 evaluations spent per example.

    Returns:
      The adversarial batch, shape and dtype of ``x``, inside the eps-ball and
      ``bounds`` (an :class:`jaxadv.AttackResult` with ``return_info``).
    """
    return _estimated_pgd(
        logits_fn, x, y, key=key, eps=eps, queries=queries, samples=num_samples,
        fd_scale=0.01 if fd_scale is None else fd_scale, step_size=step_size, norm=norm,
        targeted=targeted, bounds=bounds, loss=loss, distribution="rademacher", loop=loop,
        return_info=return_info,
    )  # fmt: skip


@overload
def nes(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    queries: int = 1000,
    num_samples: int = 16,
    fd_scale: ArrayLike | None = None,
    step_size: ArrayLike | None = None,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "cw",
    loop: LoopMode = "auto",
    return_info: Literal[False] = False,
) -> Array: ...


@overload
def nes(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    queries: int = 1000,
    num_samples: int = 16,
    fd_scale: ArrayLike | None = None,
    step_size: ArrayLike | None = None,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "cw",
    loop: LoopMode = "auto",
    return_info: Literal[True],
) -> AttackResult: ...


@overload
def nes(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    queries: int = 1000,
    num_samples: int = 16,
    fd_scale: ArrayLike | None = None,
    step_size: ArrayLike | None = None,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "cw",
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult: ...


def nes(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    queries: int = 1000,
    num_samples: int = 16,
    fd_scale: ArrayLike | None = None,
    step_size: ArrayLike | None = None,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "cw",
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult:
    r"""Gradient-free PGD with the NES gradient estimate (Ilyas et al., 2018).

    Natural evolution strategies with antithetic Gaussian sampling, with
    :math:`\sigma` = ``fd_scale`` (the search distribution's scale):

    .. math::
        \hat g = \frac{1}{2K\sigma}\sum_{k=1}^{K}
          \big(L(x_t + \sigma u_k) - L(x_t - \sigma u_k)\big)\, u_k,
        \qquad u_k \sim \mathcal N(0, I),

    (:class:`jaxadv.compose.FiniteDifference` with ``distribution="gaussian"``)
    followed by the projected step of :func:`spsa`. Queries and arguments as in
    :func:`spsa`; ``fd_scale`` (traced) defaults to 0.001.

    Returns:
      The adversarial batch, shape and dtype of ``x`` (an
      :class:`jaxadv.AttackResult` ``(x_adv, success, queries)`` with ``return_info``).
    """
    return _estimated_pgd(
        logits_fn, x, y, key=key, eps=eps, queries=queries, samples=num_samples,
        fd_scale=0.001 if fd_scale is None else fd_scale, step_size=step_size, norm=norm,
        targeted=targeted, bounds=bounds, loss=loss, distribution="gaussian", loop=loop,
        return_info=return_info,
    )  # fmt: skip
