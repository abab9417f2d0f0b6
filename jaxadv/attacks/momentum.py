r"""Momentum iterative FGSM (Dong et al., 2018) with optional input diversity (Xie et al., 2019).

MI-FGSM accumulates a velocity of L1-normalised gradients and steps along its
steepest-ascent direction:

.. math::
    g_{t+1} = \mu\, g_t + \frac{\nabla_x J(x_t, y)}{\|\nabla_x J(x_t, y)\|_1},\qquad
    x_{t+1} = \Pi_{B_\epsilon(x) \cap [lo, hi]}\big(x_t + \alpha\, d_p(g_{t+1})\big)

(:math:`d_p = \mathrm{sign}` for L-inf, :math:`g/\|g\|_2` for L2). The momentum
stabilises the update direction, which makes the examples transfer better to
other models. With input diversity (DI-MI-FGSM) the gradient at each step is
taken through a random transformation :math:`T(x_t)` applied with probability
``diversity_prob``: the input is shrunk by a random factor in
``[resize_rate, 1]`` (nearest neighbour) and zero-padded back to its size at a
random offset.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxadv.attacks.base import check_step_size, prepare
from jaxadv.attacks.iterative import check_finite_step, finite_step
from jaxadv.engine import iterate
from jaxadv.gradients import loss_and_grad
from jaxadv.losses import cross_entropy, finite_rows
from jaxadv.models import combine_model
from jaxadv.success import as_returned, hits
from jaxadv.threat_models import per_example, project_to_feasible, steepest_direction, step_along, unit_l1
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, LoopMode, LossFn, Norm, PRNGKey
from jaxadv.validation import check_norm, check_steps

__all__ = ["diverse_inputs", "mifgsm"]


def _resize_pad_one(key: PRNGKey, xi: Array, rate: Array, axes: tuple[int, int]) -> Array:
    ks, kh, kw = jax.random.split(key, 3)
    scale = jax.random.uniform(ks, (), minval=rate, maxval=1.0)
    out = xi
    mask = jnp.ones((), bool)
    for axis, k in zip(axes, (kh, kw), strict=True):
        size = xi.shape[axis]
        new = jnp.clip(jnp.floor(size * scale), 1, size).astype(jnp.int32)
        offset = jnp.floor(jax.random.uniform(k, ()) * (size - new + 1)).astype(jnp.int32)
        pos = jnp.arange(size) - offset
        src = jnp.clip((pos * size) // new, 0, size - 1)
        out = jnp.take(out, src, axis=axis)
        shape = [1] * xi.ndim
        shape[axis] = size
        mask = mask & ((pos >= 0) & (pos < new)).reshape(shape)
    return jnp.where(mask, out, 0.0)


def diverse_inputs(
    key: PRNGKey,
    x: Array,
    *,
    prob: ArrayLike = 0.5,
    resize_rate: ArrayLike = 0.9,
    spatial_axes: tuple[int, int] = (1, 2),
) -> Array:
    r"""Random resize-and-pad of each example (the input diversity of Xie et al., 2019).

    With probability ``prob`` (independently per example) the image is shrunk by
    a factor :math:`s \sim U[\text{resize\_rate}, 1]` along both spatial axes
    (nearest neighbour), then zero-padded back to its original size at a
    uniformly random offset; otherwise it is left unchanged. Differentiable in
    ``x`` (a gather), shapes static, everything traced.

    Args:
      key: PRNG key.
      x: ``[batch, ...]`` images.
      prob: probability of transforming an example (traced).
      resize_rate: smallest shrink factor, in ``(0, 1]`` (traced).
      spatial_axes: the two spatial axes of ``x`` (static; ``(1, 2)`` for NHWC).

    Returns:
      The transformed batch, shape and dtype of ``x``.
    """
    axes = tuple(a - 1 for a in spatial_axes)
    if len(axes) != 2 or min(axes) < 0 or max(axes) >= x.ndim - 1:
        raise ValueError(f"spatial_axes must name two non-batch axes of x, got {spatial_axes}")
    k_apply, k_tf = jax.random.split(key)
    keys = jax.random.split(k_tf, x.shape[0])
    rate = jnp.asarray(resize_rate, jnp.float32)
    moved = jax.vmap(lambda k, xi: _resize_pad_one(k, xi, rate, (axes[0], axes[1])))(keys, x)
    apply = jax.random.bernoulli(k_apply, jnp.asarray(prob, jnp.float32), (x.shape[0],))
    return jnp.where(per_example(apply, x) > 0, moved, x).astype(x.dtype)


class _State(NamedTuple):
    x: Array  # current iterate
    velocity: Array  # accumulated normalised gradient
    x_adv: Array  # last adversarial iterate seen
    found: Array  # [batch] bool


def _logits_through(logits_fn: LogitsFn, key: PRNGKey, i: Array, prob: Array, rate: Array, axes: Any) -> Any:
    k = jax.random.fold_in(key, i)
    return lambda xi: logits_fn(diverse_inputs(k, xi, prob=prob, resize_rate=rate, spatial_axes=axes))


def _mifgsm_body(i: Array, s: _State, operands: Any, static: Any) -> _State:
    params, x, labels, lo, hi, eps, alpha, decay, key, prob, rate = operands
    model, norm, targeted, loss, dtype, early_stop, diverse, axes = static
    logits_fn = combine_model(model, params)
    grad_fn = _logits_through(logits_fn, key, i, prob, rate, axes) if diverse else logits_fn
    _, z, g = loss_and_grad(grad_fn, s.x, labels, loss=loss, targeted=targeted)
    ok = finite_step(z, g)
    if diverse:
        z = logits_fn(s.x)
    hit = hits(z, labels, targeted)  # success of the current iterate
    velocity = decay * s.velocity + unit_l1(jnp.where(per_example(ok, g) > 0, g, 0.0))
    step = step_along(alpha, steepest_direction(velocity, norm))
    x_new = as_returned(project_to_feasible(s.x + step, x, eps, norm, lo, hi), dtype, lo, hi)
    # From a point where the logits or the gradient are not finite: back to x, and
    # the velocity is kept.
    x_new = jnp.where(per_example(ok, x) > 0, x_new, x)
    velocity = jnp.where(per_example(ok, x) > 0, velocity, s.velocity)
    frozen = hit if early_stop else jnp.zeros_like(hit)
    keep = per_example(frozen, x) > 0
    return _State(
        x=jnp.where(keep, s.x, x_new),
        velocity=jnp.where(keep, s.velocity, velocity),
        x_adv=jnp.where(per_example(hit, x) > 0, s.x, s.x_adv),
        found=s.found | hit,
    )


@functools.partial(jax.jit, static_argnames=("model", "targeted"))
def _final(params: Any, s: _State, x: Array, labels: Array, *, model: Any, targeted: bool) -> Array:
    z = combine_model(model, params)(s.x)
    hit = hits(z, labels, targeted)
    use_earlier = per_example(~hit & s.found, s.x) > 0
    # A last iterate on which the model is not finite is not returned: x is.
    out = jnp.where(per_example(finite_rows(z), x) > 0, s.x, x)
    return jnp.where(use_earlier, s.x_adv, out)


def mifgsm(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    eps: ArrayLike,
    step_size: ArrayLike | None = None,
    steps: int = 10,
    decay: ArrayLike = 1.0,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: LossFn = cross_entropy,
    diversity_prob: float = 0.0,
    resize_rate: ArrayLike = 0.9,
    spatial_axes: tuple[int, int] = (1, 2),
    key: PRNGKey | None = None,
    early_stop: bool = False,
    loop: LoopMode = "auto",
) -> Array:
    r"""Momentum iterative FGSM (Dong et al., 2018); DI-MI-FGSM with ``diversity_prob > 0``.

    Starts at :math:`x_0 = x`, :math:`g_0 = 0` and runs the update of the module
    docstring ``steps`` times. With ``decay=0`` and no diversity this is
    :func:`jaxadv.bim`.

    Every iterate is checked for success (prediction away from ``y``, or equal to
    it when ``targeted``) on the model itself, without the diversity transform.
    The returned example is the last iterate when it is adversarial, otherwise the
    last adversarial iterate seen, otherwise the last iterate: success is never
    lost by a later step. With ``early_stop`` an example stops moving once it is
    adversarial (the paper keeps stepping, which gives more confident, better
    transferring examples, hence the default ``False``).

    Examples on which the model's logits (or gradient) are not finite at ``x``
    are returned unchanged and never count as adversarial; a step from such an
    iterate goes back to ``x``. An empty batch is returned as it is.

    Args:
      logits_fn: model ``x -> logits [batch, C]``.
      x: ``[batch, ...]`` clean inputs inside ``bounds``.
      y: ``[batch]`` labels or ``[batch, C]`` one-hot (targets when ``targeted``);
        ``None``: the model's predictions.
      eps: radius, scalar or ``[batch]`` (traced).
      step_size: :math:`\alpha`, scalar or ``[batch]`` (traced); default
        ``eps / steps`` as in the paper.
      steps: number of iterations :math:`T` (static).
      decay: momentum decay :math:`\mu` (traced; the paper uses 1.0).
      norm: ``"linf"`` or ``"l2"``.
      targeted: descend the loss of the target ``y``.
      bounds: ``(lo, hi)``, scalars or arrays broadcasting against ``x``.
      loss: per-example loss (default cross-entropy).
      diversity_prob: probability of the resize-and-pad transform per example and
        step (traced; ``0`` turns input diversity off, statically).
      resize_rate: smallest shrink factor of the transform (traced).
      spatial_axes: the two spatial axes of ``x`` (static; NHWC: ``(1, 2)``).
      key: PRNG key, required when ``diversity_prob > 0``.
      early_stop: freeze an example once it is adversarial.
      loop: ``"auto"``, ``"fori"``, ``"compiled"`` or ``"host"`` (see :mod:`jaxadv.engine`).

    Returns:
      The adversarial batch, shape and dtype of ``x``.
    """
    norm = check_norm(norm)
    if norm not in ("linf", "l2"):
        raise ValueError(f"mifgsm supports norm='linf' or 'l2', got {norm!r}")
    steps = check_steps(steps)
    p = prepare(logits_fn, x, y, bounds=bounds, targeted=targeted, eps=eps)
    alpha = check_step_size(p.eps / steps if step_size is None else step_size, p.x)
    check_finite_step(alpha, p.lo, p.hi)
    diverse = not (isinstance(diversity_prob, (int, float)) and diversity_prob == 0)
    if diverse and key is None:
        raise ValueError("key is required when diversity_prob > 0 (pass key=jax.random.key(0))")
    if key is None:
        key = jax.random.key(0)
    if p.empty:
        return p.finalize(p.x)
    state = _State(p.x, jnp.zeros_like(p.x), p.x, jnp.zeros((p.x.shape[0],), bool))
    operands = (
        p.params,
        p.x,
        p.labels,
        p.lo,
        p.hi,
        p.eps,
        alpha,
        jnp.asarray(decay, jnp.float32),
        key,
        jnp.asarray(diversity_prob, jnp.float32),
        jnp.asarray(resize_rate, jnp.float32),
    )
    static = (p.model, norm, targeted, loss, p.dtype, early_stop, diverse, tuple(spatial_axes))
    state = iterate(_mifgsm_body, state, operands, steps=steps, static=static, loop=loop)
    return p.finalize(_final(p.params, state, p.x, p.labels, model=p.model, targeted=targeted))
