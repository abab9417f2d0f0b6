r"""Gradient-free PGD: projected steps along a gradient *estimated* from scores.

:func:`spsa` (Uesato et al., 2018) and :func:`nes` (Ilyas et al., 2018) take
PGD steps along the finite-difference estimate of
:class:`jaxadv.compose.FiniteDifference` (Rademacher and Gaussian probes), and
count their queries under the rules of :mod:`jaxadv.attacks.blackbox`. They
keep their own loop (rather than :class:`jaxadv.compose.Attack`'s) for that
accounting: an example stops spending queries once it succeeds.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxadv.attacks.base import check_step_size, prepare
from jaxadv.attacks.blackbox import (
    check_finite_eps,
    check_key,
    check_queries,
    empty_result,
    finish,
    stop_mask,
)
from jaxadv.callables import reraise_callable_errors
from jaxadv.compose.estimates import FiniteDifference
from jaxadv.engine import iterate
from jaxadv.losses import cw_margin, finite_rows
from jaxadv.models import combine_model
from jaxadv.success import hits
from jaxadv.threat_models import per_example, project_to_feasible, steepest_direction, step_along
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, LoopMode, LossFn, Norm, PRNGKey
from jaxadv.validation import check_norm, check_steps

__all__ = ["nes", "spsa"]


class _EstimateState(NamedTuple):
    """``x_t``: the iterate; ``done``: the example has stopped (a success, or clean
    scores not finite); ``queries``: evaluations spent."""

    key: Array
    x_t: Array
    done: Array
    queries: Array


class _EstimateOperands(NamedTuple):
    params: Any
    x: Array
    labels: Array
    lo: Array
    hi: Array
    eps: Array
    step_size: Array
    source: FiniteDifference


class _EstimateStatic(NamedTuple):
    model: Any
    norm: Norm
    targeted: bool


def _estimate_body(
    i: Array, state: _EstimateState, ops: _EstimateOperands, static: _EstimateStatic
) -> _EstimateState:
    del i
    logits_fn = combine_model(static.model, ops.params)
    key, k_dir = jax.random.split(state.key)
    g = ops.source(lambda xi, _: logits_fn(xi), state.x_t, ops.labels, key=k_dir, targeted=static.targeted)
    step = step_along(ops.step_size, steepest_direction(g.grad, static.norm))
    x_new = project_to_feasible(state.x_t + step, ops.x, ops.eps, static.norm, ops.lo, ops.hi)
    z_new = logits_fn(x_new).astype(jnp.float32)
    hit = hits(z_new, ops.labels, static.targeted)
    active = ~state.done
    # No move where a probe's scores, the estimate or the new point's scores are not finite.
    move = per_example(active & g.ok & finite_rows(z_new), ops.x) > 0
    return _EstimateState(
        key=key,
        x_t=jnp.where(move, x_new, state.x_t),
        done=state.done | (active & hit),
        queries=state.queries + active.astype(jnp.int32) * (2 * ops.source.samples + 1),
    )


@functools.partial(jax.jit, static_argnames=("model", "targeted"))
def _clean_stop(params: Any, x: Array, labels: Array, *, model: Any, targeted: bool) -> Array:
    """Examples that stop after the clean query: already a success, or scores not finite."""
    return stop_mask(combine_model(model, params)(x), labels, targeted)


def _fd_scale(
    fd_scale: ArrayLike | None, alias: ArrayLike | None, alias_name: str, default: float
) -> ArrayLike:
    """``fd_scale``, or its deprecated per-attack alias (``delta``, ``sigma``)."""
    if alias is None:
        return default if fd_scale is None else fd_scale
    if fd_scale is not None:
        raise ValueError(f"pass fd_scale only ({alias_name} is its deprecated alias), not both")
    warnings.warn(f"{alias_name}= is deprecated, pass fd_scale= instead", DeprecationWarning, stacklevel=3)
    return alias


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
    loss: LossFn,
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
    scale = check_step_size(fd_scale, p.x, "the finite-difference scale fd_scale")
    check_finite_eps(p)
    if p.empty:
        return empty_result(p, return_info=return_info)
    source = FiniteDifference(loss, samples, scale, distribution, p.lo, p.hi)
    with reraise_callable_errors():
        done = _clean_stop(p.params, p.x, p.labels, model=p.model, targeted=targeted)
        state = _EstimateState(key, p.x, done, jnp.ones(p.x.shape[:1], jnp.int32))
        operands = _EstimateOperands(p.params, p.x, p.labels, p.lo, p.hi, p.eps, alpha, source)
        static = _EstimateStatic(p.model, norm, targeted)
        state = iterate(_estimate_body, state, operands, steps=steps, static=static, loop=loop)
        return finish(p, state.x_t, state.queries, targeted=targeted, return_info=return_info)


def _num_samples(num_samples: int, samples: int | None) -> int:
    """``num_samples``, or its deprecated alias ``samples`` (not both)."""
    if samples is None:
        return num_samples
    if num_samples != 16:
        raise ValueError("pass num_samples only (samples is its deprecated alias)")
    warnings.warn("samples is deprecated; pass num_samples", DeprecationWarning, stacklevel=3)
    return samples


def spsa(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey,
    eps: ArrayLike,
    queries: int = 1000,
    num_samples: int = 16,
    fd_scale: ArrayLike | None = None,
    step_size: ArrayLike | None = None,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: LossFn = cw_margin,
    loop: LoopMode = "auto",
    return_info: bool = False,
    delta: ArrayLike | None = None,
    samples: int | None = None,
) -> Any:
    r"""Gradient-free PGD with the SPSA gradient estimate (Uesato et al., 2018).

    Each iteration draws ``num_samples`` Rademacher directions :math:`v_k \in \{\pm1\}^n`
    and estimates, with :math:`\delta` = ``fd_scale``,

    .. math::
        \hat g = \frac{1}{K}\sum_{k=1}^{K}
          \frac{L(x_t + \delta v_k) - L(x_t - \delta v_k)}{2\delta}\, v_k

    (:class:`jaxadv.compose.FiniteDifference`; the perturbed points clipped into
    ``bounds``), then takes the PGD step
    :math:`x_{t+1} = \Pi_{B_\epsilon(x)\cap[lo,hi]}(x_t + \alpha\, d_p(\hat g))`
    (:func:`jaxadv.steepest_direction`, :func:`jaxadv.project_to_feasible`).
    :math:`L` is ``loss`` (default the margin :func:`jaxadv.cw_margin`), ascended,
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
      delta: deprecated alias of ``fd_scale``.
      samples: deprecated alias of ``num_samples``.

    Returns:
      The adversarial batch, shape and dtype of ``x``, inside the eps-ball and
      ``bounds`` (an :class:`jaxadv.AttackResult` with ``return_info``).
    """
    return _estimated_pgd(
        logits_fn, x, y, key=key, eps=eps, queries=queries, samples=_num_samples(num_samples, samples),
        fd_scale=_fd_scale(fd_scale, delta, "delta", 0.01), step_size=step_size, norm=norm,
        targeted=targeted, bounds=bounds, loss=loss, distribution="rademacher", loop=loop,
        return_info=return_info,
    )  # fmt: skip


def nes(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey,
    eps: ArrayLike,
    queries: int = 1000,
    num_samples: int = 16,
    fd_scale: ArrayLike | None = None,
    step_size: ArrayLike | None = None,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: LossFn = cw_margin,
    loop: LoopMode = "auto",
    return_info: bool = False,
    sigma: ArrayLike | None = None,
    samples: int | None = None,
) -> Any:
    r"""Gradient-free PGD with the NES gradient estimate (Ilyas et al., 2018).

    Natural evolution strategies with antithetic Gaussian sampling, with
    :math:`\sigma` = ``fd_scale`` (the search distribution's scale):

    .. math::
        \hat g = \frac{1}{2K\sigma}\sum_{k=1}^{K}
          \big(L(x_t + \sigma u_k) - L(x_t - \sigma u_k)\big)\, u_k,
        \qquad u_k \sim \mathcal N(0, I),

    (:class:`jaxadv.compose.FiniteDifference` with ``distribution="gaussian"``)
    followed by the projected step of :func:`spsa`. Queries and arguments as in
    :func:`spsa`; ``fd_scale`` (traced) defaults to 0.001, and ``sigma`` is its
    deprecated alias (``samples`` that of ``num_samples``).

    Returns:
      The adversarial batch, shape and dtype of ``x`` (an
      :class:`jaxadv.AttackResult` ``(x_adv, success, queries)`` with ``return_info``).
    """
    return _estimated_pgd(
        logits_fn, x, y, key=key, eps=eps, queries=queries, samples=_num_samples(num_samples, samples),
        fd_scale=_fd_scale(fd_scale, sigma, "sigma", 0.001), step_size=step_size, norm=norm,
        targeted=targeted, bounds=bounds, loss=loss, distribution="gaussian", loop=loop,
        return_info=return_info,
    )  # fmt: skip
